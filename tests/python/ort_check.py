"""Independent cross-check of an exported tvunet model with the ONNX reference tools.

Checks the file with onnx.checker, runs it in onnxruntime on the input planes written by the Rust
test, and compares with tract's probabilities from the same run.

usage: ort_check.py MODEL.onnx PLANES.f32 TRACT.f32 SIDE
(PLANES and TRACT hold N x SIDE x SIDE little-endian float32 values.)
Prints one line 'onnxruntime max |ort - tract| = X over N planes'.
fp32 models: exits 1 above 1e-4.
int8 models (tvunet.precision = int8): the two engines may round a requantisation differently,
which moves a probability by a level or two; exits 1 when the masks at the model's threshold
agree on less than 99.5 % of pixels or a probability differs by more than 0.15.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    model_path, planes_path, tract_path, side = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    for key in ("tvunet.input_size", "tvunet.threshold", "tvunet.normalisation"):
        if key not in meta:
            print(f"metadata key {key} missing")
            return 1
    planes = np.fromfile(planes_path, dtype="<f4").reshape(-1, 1, 1, side, side)
    tract = np.fromfile(tract_path, dtype="<f4").reshape(-1, 1, 1, side, side)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    threshold = float(meta["tvunet.threshold"])
    worst, same, total = 0.0, 0, 0
    for plane, expected in zip(planes, tract):
        got = session.run(None, {name: plane})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
        same += int(((got >= threshold) == (expected >= threshold)).sum())
        total += got.size
    agreement = same / total
    print(f"onnxruntime max |ort - tract| = {worst:.3e} over {len(planes)} planes, "
          f"masks agree on {100 * agreement:.3f} % of pixels")
    if meta.get("tvunet.precision") == "int8":
        return 0 if agreement >= 0.995 and worst <= 0.15 else 1
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
