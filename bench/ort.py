"""onnxruntime on the same model file, for comparison with the tract figures.

usage: python3 bench/ort.py [MODEL] [ITERATIONS] [THREADS]
Prints the median time of one 1 x 1 x S x S inference. A comparison, not a dependency.
"""

import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

model = sys.argv[1] if len(sys.argv) > 1 else "models/tvunet-medseg.onnx"
iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 30
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
side = int({p.key: p.value for p in onnx.load(model).metadata_props}["tvunet.input_size"])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
x = np.random.default_rng(0).standard_normal((1, 1, side, side), dtype=np.float32)
session.run(None, {name: x})
times = []
for _ in range(iterations):
    t = time.perf_counter()
    session.run(None, {name: x})
    times.append(time.perf_counter() - t)
median_ms = statistics.median(times) * 1e3
print(f"onnxruntime {ort.__version__}, {threads} thread(s): median {median_ms:.2f} ms "
      f"over {iterations} runs ({model}, {side}x{side})")
