"""Published tiny x2 SR models (``../shared/peers``, see its SOURCES.md) rebuilt to run under our contract.

One copy of the peer-building code, used by ``srtc.training.evaluate --peers`` (quality) and by
``srtc.tools.bench --peers`` (speed). Every x2 peer file is rebuilt in torch from its weights and exported
to ONNX under our contract ("lr" [1,1,h,w] BT.601 limited-range Y/255 -> "sr"), so all peers run in the
same runtime as our models and the comparison is about the networks, not the runtimes:
- RGB peers from the ETDS repo (ETDS, ECBSR, ECBSR-ET, ABPN, ABPN-ET, FSRCNN-RGB, ESPCN-RGB; state_dicts
  already in their plain inference form) run on Y: the RGB input is Y replicated (limited-range Y mapped
  to the grey RGB that has it, so the first conv folds to one channel exactly), the RGB output is
  converted back to limited-range Y (folded into the last layer where it is linear). Each export is
  checked against the unfolded RGB network on grey input (max error < 1e-4).
- OpenCV FSRCNN / FSRCNN-small / ESPCN ``.pb`` (Y-only, full-range Y input) are rebuilt from the
  constants of their TensorFlow GraphDef, read with a small protobuf wire-format reader (no TensorFlow,
  and headless cv2.dnn cannot run them: their DepthToSpace layer is registered by opencv-contrib). The
  wrapper maps limited-range Y to their full-range convention and back. Each export is checked against
  an interpreter of the GraphDef's own nodes (so the PReLU decomposition, constants and DepthToSpace
  order come from the graph, not from our reading of it).
Peers that cannot be built (file or package missing, x3 only) come back as ``{"name", "reason"}`` skips.
torch and cv2 are imported only when peers are asked for.
"""

from __future__ import annotations

import fnmatch
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from srtc.runtime import LumaRunner

log = logging.getLogger(__name__)

# BT.601 limited range: Y = 16 + 219 * (kr R + kg G + kb B) on 0..255, with RGB in 0..1 (k sums to 1).
LUMA_K = (65.481 / 219.0, 128.553 / 219.0, 24.966 / 219.0)
MAX_EXPORT_ERROR = 1e-4

# (short name, family, file under the peer folder). Family decides how the state_dict is read.
PEER_FILES: tuple[tuple[str, str, str], ...] = (
    ("FSRCNN-pb", "pb", "opencv_fsrcnn/FSRCNN_x2.pb"),
    ("FSRCNN-small-pb", "pb", "opencv_fsrcnn/FSRCNN-small_x2.pb"),
    ("ESPCN-pb", "pb", "opencv_espcn/ESPCN_x2.pb"),
    ("ETDS-M4C32", "etds", "etds/ETDS_M4C32_x2.pth"),
    ("ETDS-M5C16", "etds", "etds/ETDS_M5C16_x2.pth"),
    ("ETDS-M6C32", "etds", "etds/ETDS_M6C32_x2.pth"),
    ("ETDS-M7C48", "etds", "etds/ETDS_M7C48_x2.pth"),
    ("ECBSR-M4C16", "ecbsr", "ecbsr/ECBSR_M4C16_x2.pth"),
    ("ECBSR-M4C32", "ecbsr", "ecbsr/ECBSR_M4C32_x2.pth"),
    ("ECBSR-M6C40", "ecbsr", "ecbsr/ECBSR_M6C40_x2.pth"),
    ("ECBSR-ET-M4C16", "ecbsr_et", "ecbsr/ECBSR_ET_M4C16_x2.pth"),
    ("ECBSR-ET-M4C32", "ecbsr_et", "ecbsr/ECBSR_ET_M4C32_x2.pth"),
    ("ECBSR-ET-M6C40", "ecbsr_et", "ecbsr/ECBSR_ET_M6C40_x2.pth"),
    ("ABPN-M4C28", "abpn", "abpn/ABPN_M4C28_x2.pth"),
    ("ABPN-M6C40", "abpn", "abpn/ABPN_M6C40_x2.pth"),
    ("ABPN-ET-M4C28", "abpn_et", "abpn/ABPN_ET_M4C28_x2.pth"),
    ("ABPN-ET-M6C40", "abpn_et", "abpn/ABPN_ET_M6C40_x2.pth"),
    ("FSRCNN-RGB", "fsrcnn_rgb", "fsrcnn_rgb/FSRCNN_x2.pth"),
    ("ESPCN-RGB", "espcn_rgb", "espcn_rgb/ESPCN_x2.pth"),
)
# The two groups by how they are read (names kept for callers that count them).
DNN_PEERS = tuple(e for e in PEER_FILES if e[1] == "pb")
TORCH_PEERS = tuple(e for e in PEER_FILES if e[1] != "pb")
# Files that are known but cannot be compared at x2.
NOT_X2 = {
    "bicubic_pp/bicubic_pp_x3.pth": (
        "Bicubic++ (x3)",
        "x3 only: no x2 weights were published, and our contract and benchmarks are x2",
    )
}
PEER_NOTE = "RGB net on Y replicated (R=G=B), Y of output; first conv folded to 1 ch"
PB_NOTE = "Y-only .pb rebuilt from its GraphDef; limited->full-range Y in, back out; trained on cv2 INTER_CUBIC LR"


def peer_label(short: str) -> str:
    """The table name of a peer: what it is and how it runs."""
    return f"{short} (.pb->ONNX, Y)" if short.endswith("-pb") else f"{short} (torch->ONNX, Y)"


def selected(short: str, only: tuple[str, ...] | None) -> bool:
    """``only``: short names or shell patterns (case-insensitive), e.g. ``ETDS-*`` or ``FSRCNN-pb``."""
    return only is None or any(fnmatch.fnmatchcase(short.lower(), pat.lower()) for pat in only)


# ---------------------------------------------------------------- TensorFlow GraphDef (no TensorFlow)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message: enough of the format for a GraphDef.

    The value is an int for a varint (wire type 0), else the field's bytes; which one a field is, its
    message's schema says (the readers below cast accordingly)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


def _tensor(buf: bytes) -> np.ndarray:
    """A float or int32 TensorProto (dtype, shape, tensor_content, float_val or int_val) as float32 numpy."""
    dims: list[int] = []
    content: bytes | None = None
    floats: list[float] = []
    dtype = 1  # DataType: 1 float, 3 int32
    # TensorProto: dtype is a varint; shape, content and packed values are bytes, as is a float_val (fixed32).
    for num, wire, value in _fields(buf):
        if num == 1:
            dtype = cast(int, value)
        elif num == 2:  # TensorShapeProto: repeated Dim {size = 1}
            dims += [
                cast(int, dict((n, v) for n, _, v in _fields(cast(bytes, d))).get(1, 0))
                for n2, _, d in _fields(cast(bytes, value))
                if n2 == 2
            ]
        elif num == 4:
            content = cast(bytes, value)
        elif num == 5:
            raw_f = cast(bytes, value)
            floats += list(np.frombuffer(raw_f, "<f4")) if wire == 2 else [struct.unpack("<f", raw_f)[0]]
        elif num == 7:  # int_val: only shape constants (the transpose permutation) use it
            floats += [cast(int, v) for _, _, v in _fields(cast(bytes, value))] if wire == 2 else [cast(int, value)]
    raw = "<i4" if dtype == 3 else "<f4"
    arr = np.frombuffer(content, raw).astype(np.float32) if content is not None else np.asarray(floats, np.float32)
    size = int(np.prod(dims)) if dims else 1
    if arr.size == 1 and size > 1:  # a splatted constant
        arr = np.full(size, arr[0], np.float32)
    return arr.reshape(dims)


@dataclass
class GraphNode:
    """One NodeDef: what the rebuild and the reference interpreter need of it."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)


def read_graphdef(path: Path) -> list[GraphNode]:
    """The nodes of a frozen TensorFlow GraphDef (``.pb``), with Const values as numpy arrays."""
    nodes = []
    for num, _, body in _fields(Path(path).read_bytes()):
        if num != 1:
            continue
        node = GraphNode("", "")
        for n, _, field_value in _fields(cast(bytes, body)):  # GraphDef field 1: a NodeDef message
            v = cast(bytes, field_value)  # every NodeDef field is length-delimited
            if n == 1:
                node.name = v.decode()
            elif n == 2:
                node.op = v.decode()
            elif n == 3:
                node.inputs.append(v.decode())
            elif n == 5:  # map<string, AttrValue>: key and value are length-delimited
                entry = {k: cast(bytes, val) for k, _, val in _fields(v)}
                for an, _wire, av in _fields(entry[2]):
                    key = entry[1].decode()
                    if an == 8:  # tensor (a message)
                        node.attrs[key] = _tensor(cast(bytes, av))
                    elif an == 3:  # i (a varint)
                        node.attrs[key] = av
                    elif an == 2:  # s (bytes)
                        node.attrs[key] = cast(bytes, av).decode()
                    elif an == 4:  # f (fixed32)
                        node.attrs[key] = struct.unpack("<f", cast(bytes, av))[0]
        nodes.append(node)
    return nodes


def run_graphdef(torch, nodes: list[GraphNode], x):
    """Interpret the graph's own nodes in torch (NHWC as TF does): the reference the rebuild must equal."""
    import torch.nn.functional as F

    by_name = {n.name: n for n in nodes}
    values: dict = {}

    def get(name: str):
        name = name.split(":")[0]
        if name not in values:
            node = by_name[name]
            ins = [get(i) for i in node.inputs]
            op = node.op
            if op == "Const":
                out = torch.from_numpy(np.asarray(node.attrs["value"], np.float32))
            elif op == "Placeholder":
                out = x.permute(0, 2, 3, 1)  # NCHW -> NHWC
            elif op == "Conv2D":
                assert node.attrs.get("padding") == "SAME" and node.attrs.get("data_format", "NHWC") == "NHWC"
                w = ins[1].permute(3, 2, 0, 1)  # HWIO -> OIHW
                out = F.conv2d(ins[0].permute(0, 3, 1, 2), w, padding=w.shape[-1] // 2).permute(0, 2, 3, 1)
            elif op in ("Add", "BiasAdd", "AddV2"):
                out = ins[0] + ins[1]
            elif op == "Sub":
                out = ins[0] - ins[1]
            elif op == "Mul":
                out = ins[0] * ins[1]
            elif op == "Abs":
                out = ins[0].abs()
            elif op == "Relu":
                out = F.relu(ins[0])
            elif op == "Tanh":
                out = torch.tanh(ins[0])
            elif op == "DepthToSpace":  # TF NHWC: channel (dy * b + dx) * C + c -> (h*b+dy, w*b+dx, c)
                b = int(node.attrs["block_size"])
                n_, h, w, c = ins[0].shape
                out = ins[0].reshape(n_, h, w, b, b, c // (b * b)).permute(0, 1, 3, 2, 4, 5)
                out = out.reshape(n_, h * b, w * b, c // (b * b))
            elif op == "Transpose":
                out = ins[0].permute(*[int(p) for p in ins[1].tolist()])
            else:
                raise ValueError(f"GraphDef op {op} ({name}) is not interpreted")
            values[name] = out
        return values[name]

    return get("NCHW_output")


def pb_layers(nodes: list[GraphNode]) -> dict:
    """Walk the graph from the input: convs (OIHW) with bias and activation, then what follows the shuffle.

    The PReLU appears as ``relu(x) + (alpha * (x - |x|)) * k``: alpha and k are read from the graph and
    folded to PReLU(alpha * 2k) (k is 0.5 in these files, so this is PReLU(alpha)).
    """
    by_name = {n.name: n for n in nodes}
    consumers: dict[str, list[GraphNode]] = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i.split(":")[0], []).append(n)
    const = {n.name: n.attrs["value"] for n in nodes if n.op == "Const"}

    def only(name: str, *ops: str) -> GraphNode | None:
        nexts = [c for c in consumers.get(name, []) if not ops or c.op in ops]
        return nexts[0] if nexts else None

    layers, _head = [], None
    cur = next(n for n in nodes if n.op == "Placeholder").name
    while True:
        conv = only(cur, "Conv2D")
        if conv is None:
            break
        w = np.ascontiguousarray(const[conv.inputs[1]].transpose(3, 2, 0, 1))
        layer: dict = {"w": w, "b": None, "act": None, "alpha": None}
        cur = conv.name
        add = only(cur, "Add", "BiasAdd", "AddV2")
        if add is not None and add.inputs[1] in const and const[add.inputs[1]].size == w.shape[0] > 1:
            layer["b"] = const[add.inputs[1]].reshape(-1).copy()
            cur = add.name
        nexts = consumers.get(cur, [])
        ops = {c.op for c in nexts}
        if {"Abs", "Relu"} <= ops:  # the PReLU decomposition
            relu = next(c for c in nexts if c.op == "Relu")
            # Each node below is there in the decomposition; were one missing (None), reading its name or
            # inputs would raise the AttributeError that export_peers reports as a skip, as it always has.
            sub = cast(GraphNode, only(next(c for c in nexts if c.op == "Abs").name, "Sub"))
            mul = cast(GraphNode, only(sub.name, "Mul"))
            mul2 = cast(GraphNode, only(mul.name, "Mul"))
            alpha = next(const[i] for i in mul.inputs if i in const)
            k = float(next(const[i] for i in mul2.inputs if i in const))
            layer["act"], layer["alpha"] = "prelu", (alpha * 2.0 * k).reshape(-1).astype(np.float32)
            cur = cast(GraphNode, only(relu.name, "Add", "AddV2")).name
        elif "Relu" in ops and len(nexts) == 1:
            layer["act"], cur = "relu", nexts[0].name
        layers.append(layer)
    d2s = only(cur, "DepthToSpace")
    if d2s is None or int(d2s.attrs["block_size"]) != 2:
        raise ValueError("expected a DepthToSpace with block 2 after the last conv")
    post_bias, tail = 0.0, []
    cur = d2s.name
    while cur in consumers:
        n = consumers[cur][0]
        if n.op in ("Add", "BiasAdd", "AddV2") and any(i in const for i in n.inputs):
            post_bias += float(next(const[i] for i in n.inputs if i in const).reshape(-1)[0])
        elif n.op == "Tanh":
            tail.append("tanh")
        elif n.op != "Transpose":
            raise ValueError(f"unexpected op {n.op} after DepthToSpace")
        cur = n.name
    if by_name[cur].name != "NCHW_output":
        raise ValueError("the graph does not end in NCHW_output")
    return {"layers": layers, "post_bias": post_bias, "tail": tail}


# ---------------------------------------------------------------- one generic rebuild


def _state_layers(family: str, sd: dict) -> tuple[list[dict], str]:
    """The published state_dict as (conv layers in order, how the net ends), per SOURCES.md."""

    def t(key):
        return sd[key].numpy()

    def ordered(prefix: str) -> list[int]:
        return sorted({int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")})

    layers: list[dict] = []
    if family == "etds":
        keys = ["conv_first"] + [f"backbone_convs.{i}" for i in ordered("backbone_convs")] + ["conv_last", "conv_clip"]
        layers = [{"w": t(f"{k}.weight"), "b": t(f"{k}.bias"), "act": "relu"} for k in keys]
        return layers, "mix"
    if family in ("ecbsr", "ecbsr_et"):
        for i in ordered("backbone"):
            prelu = f"backbone.{i}.1.weight" in sd
            layers.append(
                {
                    "w": t(f"backbone.{i}.0.weight"),
                    "b": t(f"backbone.{i}.0.bias"),
                    "act": "prelu" if prelu else "relu",
                    "alpha": t(f"backbone.{i}.1.weight") if prelu else None,
                }
            )
        if family == "ecbsr":
            layers[-1]["act"] = None  # plain ECBSR: linear last conv, then the anchor
            return layers, "anchor"
        return layers, "mix"
    if family in ("abpn", "abpn_et"):
        for i in ordered("backbone"):
            key = f"backbone.{i}.0" if f"backbone.{i}.0.weight" in sd else f"backbone.{i}"
            layers.append({"w": t(f"{key}.weight"), "b": t(f"{key}.bias"), "act": "relu"})
        if family == "abpn":
            layers[-1]["act"] = None
            return layers, "anchor"
        return layers, "mix"
    if family == "fsrcnn_rgb":
        layers.append(
            {
                "w": t("first_part.0.weight"),
                "b": t("first_part.0.bias"),
                "act": "prelu",
                "alpha": t("first_part.1.weight"),
            }
        )
        for i in ordered("mid_part"):
            if i % 2 == 0:
                layers.append(
                    {
                        "w": t(f"mid_part.{i}.weight"),
                        "b": t(f"mid_part.{i}.bias"),
                        "act": "prelu",
                        "alpha": t(f"mid_part.{i + 1}.weight"),
                    }
                )
        layers.append({"w": t("last_part.weight"), "b": t("last_part.bias"), "act": None, "deconv": True})
        return layers, "deconv"
    if family == "espcn_rgb":
        layers = [
            {"w": t("conv1.weight"), "b": t("conv1.bias"), "act": "tanh"},
            {"w": t("conv2.weight"), "b": t("conv2.bias"), "act": "tanh"},
            {"w": t("conv3.weight"), "b": t("conv3.bias"), "act": None},
        ]
        return layers, "sigmoid"
    raise ValueError(f"unknown peer family {family}")


def peer_builders():
    """The torch rebuild (``PeerNet``) and its reference (``rgb_reference``); torch imported only here."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    k = torch.tensor(LUMA_K)

    def to_full(x):  # limited-range Y/255 -> full-range Y (0..1) = the grey RGB that has this Y
        return x * (255.0 / 219.0) - 16.0 / 219.0

    def to_limited(v):  # full-range Y or kr R + kg G + kb B (0..1) -> limited-range Y/255
        return v * (219.0 / 255.0) + 16.0 / 255.0

    def activation(layer: dict) -> nn.Module:
        if layer["act"] == "prelu":
            act = nn.PReLU(len(layer["alpha"]))
            act.weight.data = torch.as_tensor(np.asarray(layer["alpha"], np.float32)).reshape(-1).clone()
            return act
        return {"relu": nn.ReLU(), "tanh": nn.Tanh(), None: nn.Identity()}[layer["act"]]

    def module(w: torch.Tensor, b: torch.Tensor | None, deconv: bool = False) -> nn.Module:
        m: nn.ConvTranspose2d | nn.Conv2d
        if deconv:  # FSRCNN-RGB: kernel 9, stride 2, padding 4, output_padding 1
            m = nn.ConvTranspose2d(
                w.shape[0],
                w.shape[1],
                w.shape[-1],
                stride=2,
                padding=w.shape[-1] // 2,
                output_padding=1,
                bias=b is not None,
            )
        else:
            m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2, bias=b is not None)
        m.weight.data = w.clone()
        if b is not None:
            assert m.bias is not None  # built with a bias when there is one
            m.bias.data = b.clone()
        return m

    class PeerNet(nn.Module):
        """A peer on our contract: limited-range Y in, limited-range Y out, the peer's own layers between.

        RGB peers see grey RGB (Y replicated), so their first conv is folded to one input channel, and
        their output is reduced to Y: by folding the mix into a linear last layer, or by a 1x1 mix conv
        after the last non-linearity. Y peers (.pb) see full-range Y as they were trained.
        """

        def __init__(
            self, layers: list[dict], end: str, rgb: bool, post_bias: float = 0.0, tail: tuple[str, ...] = ()
        ) -> None:
            super().__init__()
            self.end, self.post_bias, self.tail = end, float(post_bias), tuple(tail)
            convs, acts = [], []
            for i, layer in enumerate(layers):
                w = torch.as_tensor(np.asarray(layer["w"], np.float32))
                b = None if layer.get("b") is None else torch.as_tensor(np.asarray(layer["b"], np.float32))
                deconv = bool(layer.get("deconv"))
                if rgb and i == 0:  # R=G=B: a conv on 3 identical channels is a conv on one, weights summed
                    w = w.sum(dim=1, keepdim=True)
                if rgb and i == len(layers) - 1 and end in ("anchor", "deconv"):  # linear last: fold the Y mix
                    assert b is not None  # every RGB peer's layer has a bias (_state_layers)
                    # Sums of three tensors (not the int 0 that ``sum`` starts from).
                    if deconv:  # (in, 3, kh, kw) -> (in, 1, kh, kw)
                        w = cast(torch.Tensor, sum(k[c] * w[:, c : c + 1] for c in range(3)))
                        b = cast(torch.Tensor, sum(k[c] * b[c : c + 1] for c in range(3)))
                    else:  # colour-major 12 channels (c*4 + s) -> 4
                        w = cast(torch.Tensor, sum(k[c] * w[c * 4 : (c + 1) * 4] for c in range(3)))
                        b = cast(torch.Tensor, sum(k[c] * b[c * 4 : (c + 1) * 4] for c in range(3)))
                convs.append(module(w, b, deconv))
                acts.append(activation(layer))
            self.convs, self.acts = nn.ModuleList(convs), nn.ModuleList(acts)
            self.mix = None
            if rgb and end in ("mix", "sigmoid"):
                self.mix = nn.Conv2d(12, 4, 1, bias=False)
                mix = torch.zeros(4, 12, 1, 1)
                for c in range(3):
                    for s in range(4):
                        mix[s, c * 4 + s] = k[c]
                self.mix.weight.data = mix

        def forward(self, x):
            inp = to_full(x)
            h = inp
            for conv, act in zip(self.convs, self.acts):
                h = act(conv(h))
            if self.end == "anchor":  # + nearest-upsampled input: its Y mix is the grey value itself
                h = h + inp
            elif self.end == "sigmoid":
                h = torch.sigmoid(h)
            if self.mix is not None:
                h = self.mix(h)
            if self.end != "deconv":
                h = F.pixel_shuffle(h, 2)
            if self.post_bias:
                h = h + self.post_bias
            for op in self.tail:
                h = torch.tanh(h) if op == "tanh" else h
            return to_limited(torch.clamp(h, 0.0, 1.0))

    def rgb_reference(layers: list[dict], end: str):
        """The unfolded RGB network on grey input, Y taken from its (clamped) output: what the fold must equal."""

        def run(x):
            rgb = to_full(x).repeat(1, 3, 1, 1)
            h = rgb
            for layer in layers:
                w = torch.as_tensor(np.asarray(layer["w"], np.float32))
                b = torch.as_tensor(np.asarray(layer["b"], np.float32))
                if layer.get("deconv"):
                    h = F.conv_transpose2d(h, w, b, stride=2, padding=w.shape[-1] // 2, output_padding=1)
                else:
                    h = F.conv2d(h, w, b, padding=w.shape[-1] // 2)
                if layer["act"] == "prelu":
                    h = F.prelu(h, torch.as_tensor(np.asarray(layer["alpha"], np.float32)))
                elif layer["act"] == "relu":
                    h = F.relu(h)
                elif layer["act"] == "tanh":
                    h = torch.tanh(h)
            if end == "anchor":
                h = h + rgb.repeat_interleave(4, dim=1)
            if end != "deconv":
                h = F.pixel_shuffle(h, 2)
            if end == "sigmoid":
                h = torch.sigmoid(h)
            lum = sum(k[c] * h[:, c : c + 1] for c in range(3))
            return to_limited(lum.clamp(0.0, 1.0))

        return run

    def pb_reference(nodes: list[GraphNode]):
        """The GraphDef interpreted node by node on full-range Y, clamped, back to limited range."""

        def run(x):
            return to_limited(run_graphdef(torch, nodes, to_full(x)).clamp(0.0, 1.0))

        return run

    return torch, PeerNet, rgb_reference, pb_reference


# ---------------------------------------------------------------- building and exporting


@dataclass
class ExportedPeer:
    """A peer written as a contract ONNX file, with how well it matched its reference."""

    name: str  # table label
    kind: str  # family: pb | etds | ecbsr | ecbsr_et | abpn | abpn_et | fsrcnn_rgb | espcn_rgb
    onnx_path: Path
    params: int  # of the published weights
    error: float  # max |ONNX or rebuild - reference| (unfolded RGB network, or the interpreted GraphDef)
    short: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        """Only a faithful export may be scored: a wrong fold would misreport the peer."""
        return self.error < MAX_EXPORT_ERROR


def build_peer(family: str, path: Path):
    """(torch module on our contract, reference callable, published parameter count) for one peer file."""
    torch, PeerNet, rgb_reference, pb_reference = peer_builders()
    if family == "pb":
        nodes = read_graphdef(path)
        spec = pb_layers(nodes)
        params = sum(
            int(np.size(v))
            for layer in spec["layers"]
            for key, v in layer.items()
            if key in ("w", "b", "alpha") and v is not None
        ) + (1 if spec["post_bias"] else 0)
        model = PeerNet(spec["layers"], "pb", rgb=False, post_bias=spec["post_bias"], tail=spec["tail"])
        return model.eval(), pb_reference(nodes), params
    sd = torch.load(path, map_location="cpu", weights_only=True)
    layers, end = _state_layers(family, sd)
    model = PeerNet(layers, end, rgb=True)
    return model.eval(), rgb_reference(layers, end), sum(v.numel() for v in sd.values())


def list_peer_files(peers: Path, only: tuple[str, ...] | None = None) -> tuple[list[tuple[str, str, Path]], list[dict]]:
    """The known x2 peer files present under ``peers``, and skips: missing, x3-only or unknown files."""
    peers = Path(peers)
    found, skipped = [], []
    for short, family, rel in PEER_FILES:
        if not selected(short, only):
            continue
        path = peers / rel
        if path.is_file():
            found.append((short, family, path))
        else:
            skipped.append({"name": peer_label(short), "reason": f"{path} not found"})
    known = {rel for _, _, rel in PEER_FILES}
    for path in sorted(peers.rglob("*")):
        rel = path.relative_to(peers).as_posix()
        if path.suffix not in (".pth", ".pb", ".onnx") or rel in known:
            continue
        name, reason = NOT_X2.get(rel, (rel, "not a known peer layout: add it to srtc.training.peers.PEER_FILES"))
        if only is None or selected(name.split(" ")[0], only):
            skipped.append({"name": name, "reason": reason})
    return found, skipped


def export_peers(
    peers: Path, workdir: Path, only: tuple[str, ...] | None = None
) -> tuple[list[ExportedPeer], list[dict]]:
    """Rebuild, check and export every x2 peer under ``peers`` (``only``: short names or patterns)."""
    try:
        from .export import export_onnx  # needs torch and onnx (the train extra)
    except ImportError as exc:
        files, skipped = list_peer_files(peers, only)
        reason = f"train extra not installed ({exc})"
        return [], skipped + [{"name": peer_label(s), "reason": reason} for s, _, _ in files]

    files, skipped = list_peer_files(peers, only)
    found = []
    for short, family, path in files:
        label = peer_label(short)
        try:
            model, reference, params = build_peer(family, path)
        except (ValueError, KeyError, StopIteration, AttributeError) as exc:
            skipped.append({"name": label, "reason": f"could not rebuild {path.name}: {exc!r}"})
            continue
        onnx_path = Path(workdir) / f"{short}.onnx"
        export_onnx(model, onnx_path)
        err = max_error(model, reference, onnx_path)
        log.info("peer %s: %d params, exported, max |onnx - reference| = %.2e", label, params, err)
        found.append(
            ExportedPeer(label, family, onnx_path, params, err, short, PB_NOTE if family == "pb" else PEER_NOTE)
        )
    return found, skipped


def max_error(model, reference, onnx_path: Path) -> float:
    """Largest |ONNX - reference| and |rebuild - reference| over real-ish sizes (odd ones included)."""
    import torch

    run = LumaRunner(onnx_path, 1)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in ((36, 64), (37, 51)):
        x = torch.rand(1, 1, h, w, generator=gen) * (219.0 / 255.0) + 16.0 / 255.0
        y_u8 = np.rint(x.numpy()[0, 0] * 255).astype(np.uint8)
        x = torch.from_numpy(y_u8.astype(np.float32) / 255.0)[None, None]
        with torch.no_grad():
            ref = reference(x).numpy()[0, 0]
            rebuilt = model(x).numpy()[0, 0]
        worst = max(worst, float(np.abs(run(y_u8) - ref).max()), float(np.abs(rebuilt - ref).max()))
    return worst


# ---------------------------------------------------------------- for quality evaluation


@dataclass
class PeerUpscaler:
    """A peer ready for ``srtc.training.evaluate``: LR luma uint8 -> SR luma float 0..1."""

    name: str
    upscale: Callable[[np.ndarray], np.ndarray]
    params: int | None
    note: str


def peer_upscalers(
    peers: Path, workdir: Path, threads: int = 2, only: tuple[str, ...] | None = None
) -> tuple[list[PeerUpscaler], list[dict]]:
    """Every runnable peer under ``peers`` as a luma upscaler; the rest as skips with reasons."""

    peers = Path(peers)
    if not peers.is_dir():
        raise FileNotFoundError(f"peer folder not found: {peers}")
    found: list[PeerUpscaler] = []
    exported, skipped = export_peers(peers, workdir, only)
    for peer in exported:
        if not peer.ok:
            skipped.append({"name": peer.name, "reason": f"ONNX differs from its reference by {peer.error:.1e}"})
            continue
        found.append(PeerUpscaler(peer.name, LumaRunner(peer.onnx_path, threads), peer.params, peer.note))
    return found, skipped
