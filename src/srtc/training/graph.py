"""The ONNX graph of a quarter-resolution generator, written node by node.

Why not ``torch.onnx.export``: traced, ``QuarterResSR.forward`` becomes a graph that spends 15-20% of
its time outside the convs on a 640x360 frame (onnxruntime profile, one thread): the pixel unshuffle as
Reshape-Transpose-Reshape (0.8 ms), and the replicate pad and the two crops that make odd sizes work
run on every frame, even sizes included (0.8 ms; the server only ever feeds even ones). Written by hand
the same computation is

    lr -> If(odd H or W: pad bottom/right by replication) -> SpaceToDepth(2) -> Sub(shift)
       -> [Conv -> LeakyRelu]* -> [Conv 1x1 -> LeakyRelu] -> Conv -> Add(Gather: nearest residual)
       -> DepthToSpace(4) -> If(odd: crop to 2H x 2W) -> sr

with the same weights in the same order of operations, so its output equals the traced graph's to the
last bit, and an even frame takes neither branch's copy. (SpaceToDepth lays out a one-channel input as
``F.pixel_unshuffle`` does; DepthToSpace in DCR mode as ``F.pixel_shuffle`` does for one output channel.)
Full-resolution generators (``srtc.training.fullres``) need no padding and keep the traced export.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .arch import QuarterResSR

OPSET = 17


class _Builder:
    """Collects nodes and initialisers, naming every node (``srtc.training.quantize`` excludes nodes by name)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray | torch.Tensor) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"/{output}/{op}", **attrs))
        return output


def _branch(name: str, nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _identity(name: str, source: str) -> onnx.GraphProto:
    return _branch(
        name, [helper.make_node("Identity", [source], [f"{name}_out"], name=f"/{name}/Identity")], f"{name}_out"
    )


def _conv(b: _Builder, name: str, x: str, conv: torch.nn.Conv2d) -> str:
    k = conv.kernel_size[0]
    assert conv.bias is not None  # the generators' convs are built with a bias
    return b.node(
        "Conv",
        [x, b.const(f"{name}.weight", conv.weight), b.const(f"{name}.bias", conv.bias)],
        f"{name}_out",
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
    )


def _act(b: _Builder, name: str, x: str, slope: float) -> str:
    if slope == 0:
        return b.node("Relu", [x], name)
    return b.node("LeakyRelu", [x], name, alpha=slope)


def quarter_res_graph(model: QuarterResSR) -> onnx.ModelProto:
    """The contract's graph (input ``lr`` [1,1,H,W], output ``sr`` [1,1,2H,2W], H and W dynamic) of a
    plain ``QuarterResSR`` (``srtc.training.arch.fused``), or of one with a dense LR-resolution tail."""
    if getattr(model, "reparam", False):
        raise ValueError("write the fused net: srtc.training.arch.fused(model)")
    if model.lr_tail and not model.dense_tail:
        raise ValueError("an LR-resolution tail is written in its dense form: fused(model, dense_tail=True)")
    b = _Builder()
    b.const("two", np.array([2, 2], np.int64))
    b.const("axes_hw", np.array([2, 3], np.int64))
    b.const("zeros_2", np.zeros(2, np.int64))
    b.const("zeros_6", np.zeros(6, np.int64))
    shape = b.node("Shape", ["lr"], "lr_shape")
    hw = b.node(
        "Slice", [shape, b.const("two_i", np.array([2], np.int64)), b.const("four_i", np.array([4], np.int64))], "lr_hw"
    )
    odd_hw = b.node("Mod", [hw, "two"], "odd_hw")
    odd = b.node("Cast", [b.node("ReduceMax", [odd_hw], "odd_any", keepdims=0)], "odd", to=TensorProto.BOOL)

    pad = [
        helper.make_node("Concat", ["zeros_6", odd_hw], ["pads"], name="/pads/Concat", axis=0),
        helper.make_node("Pad", ["lr", "pads"], ["lr_padded"], name="/lr_padded/Pad", mode="edge"),
    ]
    x = b.node(
        "If", [odd], "lr_even", then_branch=_branch("pad", pad, "lr_padded"), else_branch=_identity("as_is", "lr")
    )

    lr4 = b.node("SpaceToDepth", [x], "lr4", blocksize=2)
    shift = b.node("Constant", [], "shift", value=numpy_helper.from_array(np.array(model.shift, np.float32)))
    f = b.node("Sub", [lr4, shift], "shifted")  # a Constant node: initialisers are the learnt weights
    for name, conv in [("head", model.head), *((f"body.{i}", c) for i, c in enumerate(model.body))]:
        # Not reparam (checked above): every conv of the net is a plain nn.Conv2d.
        f = _act(b, f"{name}_act", _conv(b, name, f, cast(torch.nn.Conv2d, conv)), model.slope)
    if model.lr_tail:
        f = _act(b, "expand_act", _conv(b, "expand", f, model.expand), model.slope)
        # The file keeps the learnt tail (and one zero); onnxruntime gathers the dense kernel once, at load.
        t = cast(torch.nn.Conv2d, model.tail)
        assert t.bias is not None  # built with a bias
        flat = b.const("tail.flat", torch.cat([t.weight.flatten(), t.bias, t.bias.new_zeros(1)]))
        kernel = b.node("Gather", [flat, b.const("tail.kernel_index", model.tail_kernel_index)], "tail.weight")
        bias = b.node("Gather", [flat, b.const("tail.bias_index", model.tail_bias_index)], "tail.bias")
        sub = b.node("Conv", [f, kernel, bias], "tail_out", kernel_shape=[3, 3], pads=[1] * 4)
    else:
        sub = _conv(b, "tail", f, cast(torch.nn.Conv2d, model.tail))
    nearest = b.node("Gather", [lr4, b.const("nearest_index", model.nearest_index.to(torch.int64))], "nearest", axis=1)
    hr = b.node("DepthToSpace", [b.node("Add", [sub, nearest], "sub_pixels")], "hr", blocksize=4, mode="DCR")

    # Whether to crop is read off hr's own shape, so the If depends on hr explicitly: onnxruntime's
    # quantiser re-sorts the nodes and does not see what a branch reads from the outer scope.
    hw2 = b.node("Mul", [hw, "two"], "hw2")
    hr_hw = b.node("Slice", [b.node("Shape", [hr], "hr_shape"), "two_i", "four_i"], "hr_hw")
    extra = b.node("ReduceMax", [b.node("Sub", [hr_hw, hw2], "hr_extra")], "hr_extra_any", keepdims=0)
    crop = [helper.make_node("Slice", [hr, "zeros_2", hw2, "axes_hw"], ["hr_cropped"], name="/hr_cropped/Slice")]
    b.node(
        "If",
        [b.node("Cast", [extra], "cropped", to=TensorProto.BOOL)],
        "sr",
        then_branch=_branch("crop", crop, "hr_cropped"),
        else_branch=_identity("whole", hr),
    )

    graph = helper.make_graph(
        b.nodes,
        "quarter_res_sr",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, [1, 1, "h", "w"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, [1, 1, "h2", "w2"])],
        b.initializers,
    )
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="srtc.training.graph")
    out.ir_version = 8  # what the legacy exporter wrote for opset 17; onnxruntime 1.x reads it
    onnx.checker.check_model(out)
    return out


def outer_scope_producers(model: onnx.ModelProto) -> list[str]:
    """Names of the top-level nodes whose outputs an If branch reads.

    onnxruntime's QDQ quantiser renames a tensor it quantises in the main graph but not in the branches
    that read it from the outer scope, which leaves them pointing at nothing; these nodes stay in float
    (``nodes_to_exclude``). In a quarter-resolution graph that is the DepthToSpace before the crop.
    """

    def read(graph: onnx.GraphProto) -> set[str]:
        names = set()
        for node in graph.node:
            names.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    names |= read(attr.g)
        return names

    branch_reads: set[str] = set()
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                branch_reads |= read(attr.g)
    return [n.name for n in model.graph.node if set(n.output) & branch_reads]
