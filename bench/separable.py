#!/usr/bin/env python3
"""Writes an untrained U-Net ONNX file of a given shape for latency measurement only.

    python3 bench/separable.py OUT.onnx DEPTH BASE SIDE plain|separable [transposed|nearest]

The graph has the layout `tvunet export` writes (conv + bias + ReLU with batch norm folded,
2x2 max-pool, 2x2 transposed-conv up-sampling, skip concatenation, 1x1 head, sigmoid) and the
same metadata keys, so the device bench and bench/ort.py load it like a shipped model. With
`separable` every 3x3 convolution becomes a depthwise 3x3 convolution (one filter per input
channel) followed by a pointwise 1x1 convolution and ReLU, the MobileNet-style block.

The up-sampling is a 2x2 stride-2 transposed convolution (what `tvunet export` writes) or, with
`nearest`, a nearest-neighbour `Resize` by 2 followed by a 1x1 convolution to the same channels.

Weights are random (He initialisation, fixed seed): latency does not depend on their values,
so this lets a network shape be timed in tract and onnxruntime before anyone trains it.
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.macs = [], [], 0

    def weight(self, name, shape, fan_in):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, name))
        return name

    def bias(self, name, n):
        self.inits.append(numpy_helper.from_array(np.zeros(n, np.float32), name))
        return name

    def conv(self, name, x, c_in, c_out, k, pixels, group=1, relu=True):
        self.macs += c_out * (c_in // group) * k * k * pixels
        w = self.weight(f"{name}.weight", (c_out, c_in // group, k, k), c_in // group * k * k)
        b = self.bias(f"{name}.bias", c_out)
        p = k // 2
        out = f"{name}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, w, b], [out], kernel_shape=[k, k], pads=[p, p, p, p],
            strides=[1, 1], group=group))
        if not relu:
            return out
        self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"]))
        return f"{name}.relu"

    def conv3(self, name, x, c_in, c_out, pixels, separable):
        if not separable:
            return self.conv(name, x, c_in, c_out, 3, pixels)
        d = self.conv(f"{name}.dw", x, c_in, c_in, 3, pixels, group=c_in, relu=False)
        return self.conv(f"{name}.pw", d, c_in, c_out, 1, pixels)

    def block(self, name, x, c_in, c_out, pixels, separable):
        x = self.conv3(f"{name}.conv1", x, c_in, c_out, pixels, separable)
        return self.conv3(f"{name}.conv2", x, c_out, c_out, pixels, separable)


def build(depth, base, side, separable, upsample="transposed"):
    g = Graph()
    x, c_in, skips = "slice", 1, []
    for level in range(depth):
        c = base << level
        y = g.block(f"down{level}", x, c_in, c, (side >> level) ** 2, separable)
        skips.append((y, c))
        x = f"down{level}.pool"
        g.nodes.append(helper.make_node("MaxPool", [y], [x], kernel_shape=[2, 2], strides=[2, 2]))
        c_in = c
    c_bottom = base << depth
    x = g.block("bottom", x, c_in, c_bottom, (side >> depth) ** 2, separable)
    c_in = c_bottom
    for level in reversed(range(depth)):
        skip, c = skips[level]
        if upsample == "nearest":
            scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32),
                                             f"up{level}.scales")
            g.inits.append(scales)
            g.nodes.append(helper.make_node("Resize", [x, "", scales.name], [f"up{level}.resized"],
                                            mode="nearest"))
            # A 1x1 convolution without ReLU, writing `up{level}.out` as the transposed one does.
            g.conv(f"up{level}", f"up{level}.resized", c_in, c, 1, (side >> level) ** 2,
                   relu=False)
        else:
            w = g.weight(f"up{level}.weight", (c_in, c, 2, 2), c_in * 4)
            b = g.bias(f"up{level}.bias", c)
            g.macs += c_in * c * 4 * (side >> (level + 1)) ** 2
            g.nodes.append(helper.make_node(
                "ConvTranspose", [x, w, b], [f"up{level}.out"], kernel_shape=[2, 2],
                strides=[2, 2]))
        g.nodes.append(helper.make_node("Concat", [f"up{level}.out", skip], [f"up{level}.cat"],
                                        axis=1))
        x = g.block(f"up{level}.block", f"up{level}.cat", 2 * c, c, (side >> level) ** 2,
                    separable)
        c_in = c
    logits = g.conv("head", x, base, 1, 1, side * side, relu=False)
    g.nodes.append(helper.make_node("Sigmoid", [logits], ["probability"]))
    graph = helper.make_graph(
        g.nodes, "tvunet",
        [helper.make_tensor_value_info("slice", TensorProto.FLOAT, [1, 1, side, side])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1, side, side])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    kind = "separable" if separable else "plain"
    helper.set_model_props(model, {
        "tvunet.input_size": str(side),
        "tvunet.normalisation": "zscore-per-slice",
        "tvunet.threshold": "0.5",
        "tvunet.target": "infection",
        "tvunet.precision": "fp32",
        "tvunet.architecture": f"unet depth {depth} base {base} {kind} (untrained, latency only)",
    })
    onnx.checker.check_model(model)
    return model, g.macs


def main():
    if len(sys.argv) not in (6, 7) or sys.argv[5] not in ("plain", "separable"):
        sys.exit(__doc__)
    out, depth, base, side, kind = sys.argv[1:6]
    upsample = sys.argv[6] if len(sys.argv) == 7 else "transposed"
    if upsample not in ("transposed", "nearest"):
        sys.exit(__doc__)
    model, macs = build(int(depth), int(base), int(side), kind == "separable", upsample)
    onnx.save(model, out)
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    print(f"{out}: {kind}, {upsample} up-sampling, depth {depth}, base {base}, side {side}, "
          f"{params} parameters, "
          f"{macs / 1e9:.2f} GMAC")


if __name__ == "__main__":
    main()
