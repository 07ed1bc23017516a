"""Shared by bench/ensemble.py and bench/postprocess.py: a fold model in onnxruntime and its
probability map for a stored slice, preprocessed as the device does (bilinear resize to the
model's side, per-slice standardisation) and resized back to the slice."""

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

DATA = "../shared/data/medseg/infnet_medseg100"


def session(path):
    """An onnxruntime session on one thread, and the model's input side from its metadata."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    side = int({p.key: p.value for p in onnx.load(path).metadata_props}["tvunet.input_size"])
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), side


def probability(model, image):
    """Lesion probability per pixel of `image` (2-D uint8) for `model` = (session, side)."""
    sess, side = model
    plane = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)
    plane = (plane - plane.mean()) / max(plane.std(), 1.0)
    prob = sess.run(None, {sess.get_inputs()[0].name: plane[None, None]})[0][0, 0]
    return np.asarray(Image.fromarray(prob).resize(image.shape[::-1], Image.BILINEAR))


def slice_and_mask(sid):
    """The stored slice `sid` and its radiologist mask (bool)."""
    image = np.asarray(Image.open(f"{DATA}/images/{sid}.jpg").convert("L"))
    return image, np.asarray(Image.open(f"{DATA}/masks_binary/{sid}.png")) > 127
