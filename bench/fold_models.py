"""Shared by bench/ensemble.py and bench/postprocess.py: a fold model in onnxruntime and its
probability map for a stored slice, preprocessed as the device does (bilinear resize to the
model's side, per-slice standardisation) and resized back to the slice."""

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

DATA = "../shared/data/medseg/infnet_medseg100"


def session(path):
    """An onnxruntime session on one thread, the model's input side and its normalisation, from
    its metadata."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return sess, int(meta["tvunet.input_size"]), meta["tvunet.normalisation"]


def otsu(hist):
    """Otsu's threshold t over 256 bins (classes < t and >= t), 128 for one grey level."""
    levels = np.arange(256, dtype=np.float64)
    below = np.cumsum(hist)[:-1]
    sum_below = np.cumsum(hist * levels)[:-1]
    above = hist.sum() - below
    sum_all = float((hist * levels).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        var = below * above * (sum_below / below - (sum_all - sum_below) / above) ** 2
    var[(below == 0) | (above == 0)] = -1
    return int(np.argmax(var)) + 1 if var.max() >= 0 else 128


def normalise(plane, normalisation):
    """The device's normalisations (tvunet_device::preprocess::Normalisation)."""
    if normalisation == "zscore-per-slice":
        return (plane - plane.mean()) / max(plane.std(), 1.0)
    assert normalisation == "tissue-anchored", normalisation
    hist = np.bincount(np.clip(np.round(plane), 0, 255).astype(int).ravel(), minlength=256)
    t = otsu(hist.astype(np.float64))

    def median(lo, hi):
        c = np.cumsum(hist[lo:hi])
        return lo + int(np.searchsorted(c, c[-1] / 2))

    dark, bright = median(0, t), median(t, 256)
    return (plane - (bright + dark) / 2) / max((bright - dark) / 2, 4.0)


def probability(model, image):
    """Lesion probability per pixel of `image` (2-D uint8) for `model` = (session, side,
    normalisation)."""
    sess, side, normalisation = model
    plane = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)
    plane = normalise(plane, normalisation).astype(np.float32)
    prob = sess.run(None, {sess.get_inputs()[0].name: plane[None, None]})[0][0, 0]
    return np.asarray(Image.fromarray(prob).resize(image.shape[::-1], Image.BILINEAR))


def slice_and_mask(sid):
    """The stored slice `sid` and its radiologist mask (bool)."""
    image = np.asarray(Image.open(f"{DATA}/images/{sid}.jpg").convert("L"))
    return image, np.asarray(Image.open(f"{DATA}/masks_binary/{sid}.png")) > 127
