"""Published tiny x2 SR models (``../shared/peers``, see its SOURCES.md) rebuilt to run under our contract.

One copy of the peer-building code, used by ``models.evaluate --peers`` (quality) and by
``server.bench --peers`` (speed):
- ECBSR-M4C16, ETDS-M5C16 and ESPCN (RGB, from the ETDS repo) are rebuilt in torch from their
  state_dicts (already the inference-time plain form) and run on Y: the RGB input is Y replicated
  (limited-range Y mapped to grey RGB, so the first conv folds to one channel exactly), the RGB
  output is converted back to BT.601 limited-range Y. Each is exported to ONNX under our contract
  ("lr" [1,1,h,w] Y/255 -> "sr") and checked against the unfolded RGB network (max error < 1e-4).
- OpenCV FSRCNN/ESPCN ``.pb`` (Y-only, trained on non-antialiased cv2 LR) run through ``cv2.dnn``
  when the installed OpenCV can (their DepthToSpace layer is registered by opencv-contrib's
  dnn_superres); otherwise they are skipped with that reason.
Peers that cannot be built (file or package missing) come back as ``{"name", "reason"}`` skips.
torch and cv2 are imported only when peers are asked for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# BT.601 limited range: Y = 16 + 219 * (kr R + kg G + kb B) on 0..255, with RGB in 0..1 (k sums to 1).
LUMA_K = (65.481 / 219.0, 128.553 / 219.0, 24.966 / 219.0)
MAX_EXPORT_ERROR = 1e-4

DNN_PEERS = (
    ("FSRCNN (.pb, cv2.dnn)", "opencv_fsrcnn/FSRCNN_x2.pb"),
    ("FSRCNN-small (.pb, cv2.dnn)", "opencv_fsrcnn/FSRCNN-small_x2.pb"),
    ("ESPCN (.pb, cv2.dnn)", "opencv_espcn/ESPCN_x2.pb"),
)
DNN_NOTE = "Y-only, trained on cv2 INTER_CUBIC LR"


# ---------------------------------------------------------------- torch peers (RGB nets run on Y)

def torch_peer_builders():
    """Y-contract torch wrappers of the RGB peers (torch imported here, only when peers are asked for)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    k = torch.tensor(LUMA_K)

    def y_to_rgb(x):  # limited-range Y/255 -> the grey RGB (0..1) that has this Y
        return x * (255.0 / 219.0) - 16.0 / 219.0

    def rgb_to_y(rgb_lum):  # kr R + kg G + kb B (0..1) -> limited-range Y/255
        return rgb_lum * (219.0 / 255.0) + 16.0 / 255.0

    def fold_in(w):  # R=G=B: a conv on 3 identical channels is a conv on one with summed weights (exact)
        return w.sum(dim=1, keepdim=True)

    def fold_out(w, b):  # the Y mix of a linear 12-channel (colour-major, c*4+s) layer, folded to 4 channels
        w4 = sum(k[c] * w[c * 4:(c + 1) * 4] for c in range(3))
        b4 = sum(k[c] * b[c * 4:(c + 1) * 4] for c in range(3))
        return w4, b4

    def y_mix():  # 1x1 conv 12 -> 4 taking the Y mix of colour channels, for outputs behind a non-linearity
        w = torch.zeros(4, 12, 1, 1)
        for c in range(3):
            for s in range(4):
                w[s, c * 4 + s] = k[c]
        return w

    class ECBSR(nn.Module):
        """Plain (re-parameterised) ECBSR: conv+PReLU stack, linear last conv, nearest anchor, shuffle."""

        def __init__(self, sd: dict) -> None:
            super().__init__()
            n = len({key.split(".")[1] for key in sd})
            convs, acts = [], []
            for i in range(n):
                w, b = sd[f"backbone.{i}.0.weight"], sd[f"backbone.{i}.0.bias"]
                if i == 0:
                    w = fold_in(w)
                if i == n - 1:
                    w, b = fold_out(w, b)
                conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
                conv.weight.data, conv.bias.data = w.clone(), b.clone()
                convs.append(conv)
                if i < n - 1:
                    act = nn.PReLU(w.shape[0])
                    act.weight.data = sd[f"backbone.{i}.1.weight"].clone()
                    acts.append(act)
            self.convs, self.acts = nn.ModuleList(convs), nn.ModuleList(acts)

        def forward(self, x):
            rgb = y_to_rgb(x)
            h = rgb
            for conv, act in zip(self.convs, self.acts):
                h = act(conv(h))
            h = self.convs[-1](h) + rgb  # anchor: the Y mix of R,G,B repeated is the grey value itself
            return rgb_to_y(torch.clamp(F.pixel_shuffle(h, 2), 0.0, 1.0))

    class ETDS(nn.Module):
        """ETDS in its deployable (equivalently transformed) form; the last two ReLUs are the clamp."""

        def __init__(self, sd: dict) -> None:
            super().__init__()
            def conv(prefix: str, fold: bool = False) -> nn.Conv2d:
                w, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
                w = fold_in(w) if fold else w
                c = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2)
                c.weight.data, c.bias.data = w.clone(), b.clone()
                return c
            n = len({key.split(".")[1] for key in sd if key.startswith("backbone_convs.")})
            self.first = conv("conv_first", fold=True)
            self.body = nn.ModuleList(conv(f"backbone_convs.{i}") for i in range(n))
            self.last, self.clip = conv("conv_last"), conv("conv_clip")
            self.mix = nn.Conv2d(12, 4, 1, bias=False)
            self.mix.weight.data = y_mix()

        def forward(self, x):
            h = F.relu(self.first(y_to_rgb(x)))
            for c in self.body:
                h = F.relu(c(h))
            h = F.relu(self.clip(F.relu(self.last(h))))
            return rgb_to_y(F.pixel_shuffle(self.mix(h), 2))

    class ESPCN(nn.Module):
        """ESPCN (RGB, ETDS repo): conv5x5 + tanh, conv3x3 + tanh, conv3x3 to 12, shuffle, sigmoid."""

        def __init__(self, sd: dict) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 64, 5, padding=2)
            self.c1.weight.data, self.c1.bias.data = fold_in(sd["conv1.weight"]).clone(), sd["conv1.bias"].clone()
            self.c2 = nn.Conv2d(64, 32, 3, padding=1)
            self.c2.weight.data, self.c2.bias.data = sd["conv2.weight"].clone(), sd["conv2.bias"].clone()
            self.c3 = nn.Conv2d(32, 12, 3, padding=1)
            self.c3.weight.data, self.c3.bias.data = sd["conv3.weight"].clone(), sd["conv3.bias"].clone()
            self.mix = nn.Conv2d(12, 4, 1, bias=False)
            self.mix.weight.data = y_mix()

        def forward(self, x):
            h = torch.tanh(self.c2(torch.tanh(self.c1(y_to_rgb(x)))))
            return rgb_to_y(F.pixel_shuffle(self.mix(torch.sigmoid(self.c3(h))), 2))

    def reference(sd_model, kind: str):
        """The unfolded RGB network on grey input, Y taken from its output: what the fold must equal."""
        def run(x):
            rgb = y_to_rgb(x).repeat(1, 3, 1, 1)
            if kind == "ecbsr":
                n = len({key.split(".")[1] for key in sd_model})
                h = rgb
                for i in range(n):
                    h = F.conv2d(h, sd_model[f"backbone.{i}.0.weight"], sd_model[f"backbone.{i}.0.bias"], padding=1)
                    if i < n - 1:
                        h = F.prelu(h, sd_model[f"backbone.{i}.1.weight"])
                out = F.pixel_shuffle(h + rgb.repeat_interleave(4, dim=1), 2)
                lum = sum(k[c] * out[:, c:c + 1] for c in range(3)).clamp(0.0, 1.0)
            elif kind == "etds":
                n = len({key.split(".")[1] for key in sd_model if key.startswith("backbone_convs.")})
                h = F.relu(F.conv2d(rgb, sd_model["conv_first.weight"], sd_model["conv_first.bias"], padding=1))
                for i in range(n):
                    h = F.relu(F.conv2d(h, sd_model[f"backbone_convs.{i}.weight"],
                                        sd_model[f"backbone_convs.{i}.bias"], padding=1))
                h = F.relu(F.conv2d(h, sd_model["conv_last.weight"], sd_model["conv_last.bias"], padding=1))
                out = F.pixel_shuffle(F.relu(F.conv2d(h, sd_model["conv_clip.weight"], sd_model["conv_clip.bias"])), 2)
                lum = sum(k[c] * out[:, c:c + 1] for c in range(3))
            else:
                h = torch.tanh(F.conv2d(rgb, sd_model["conv1.weight"], sd_model["conv1.bias"], padding=2))
                h = torch.tanh(F.conv2d(h, sd_model["conv2.weight"], sd_model["conv2.bias"], padding=1))
                out = torch.sigmoid(F.pixel_shuffle(
                    F.conv2d(h, sd_model["conv3.weight"], sd_model["conv3.bias"], padding=1), 2))
                lum = sum(k[c] * out[:, c:c + 1] for c in range(3))
            return rgb_to_y(lum)
        return run

    return torch, {"ecbsr": ECBSR, "etds": ETDS, "espcn": ESPCN}, reference


TORCH_PEERS = (
    ("ECBSR-M4C16 (torch->ONNX, Y)", "ecbsr", "ecbsr/ECBSR_M4C16_x2.pth"),
    ("ETDS-M5C16 (torch->ONNX, Y)", "etds", "etds/ETDS_M5C16_x2.pth"),
    ("ESPCN-RGB (torch->ONNX, Y)", "espcn", "espcn_rgb/ESPCN_x2.pth"),
)
PEER_NOTE = "RGB net on Y replicated (R=G=B), Y of output; first conv folded to 1 ch"


@dataclass
class ExportedPeer:
    """A torch peer written as a contract ONNX file, with how well it matched its RGB network."""

    name: str
    kind: str  # ecbsr | etds | espcn
    onnx_path: Path
    params: int  # of the RGB state_dict, as published
    error: float  # max |ONNX - unfolded RGB torch network| on grey input

    @property
    def ok(self) -> bool:
        """Only a faithful export may be scored: a wrong fold would misreport the peer."""
        return self.error < MAX_EXPORT_ERROR


def export_torch_peers(peers: Path, workdir: Path, only: tuple[str, ...] | None = None
                       ) -> tuple[list[ExportedPeer], list[dict]]:
    """Rebuild, check and export the torch peers found under ``peers`` (``only``: a subset of kinds)."""
    try:
        torch, builders, reference = torch_peer_builders()
    except ImportError as exc:
        return [], [{"name": label, "reason": f"torch not installed ({exc})"} for label, _, _ in TORCH_PEERS]
    from models.export import export_onnx

    found, skipped = [], []
    for label, kind, rel in TORCH_PEERS:
        if only is not None and kind not in only:
            continue
        path = Path(peers) / rel
        if not path.is_file():
            skipped.append({"name": label, "reason": f"{path} not found"})
            continue
        sd = torch.load(path, map_location="cpu", weights_only=True)
        model = builders[kind](sd).eval()
        onnx_path = Path(workdir) / f"{kind}_{path.stem}.onnx"
        export_onnx(model, onnx_path)
        err = max_error(torch, model, reference(sd, kind), onnx_path)
        log.info("peer %s: exported, max |onnx - torch RGB reference| = %.2e", label, err)
        found.append(ExportedPeer(label, kind, onnx_path, sum(v.numel() for v in sd.values()), err))
    return found, skipped


def max_error(torch, model, reference, onnx_path: Path) -> float:
    """Largest |ONNX (folded Y network) - unfolded RGB torch network on grey input| over real-ish sizes."""
    from models.evaluate import onnx_upscaler

    run = onnx_upscaler(onnx_path, 1)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in ((36, 64), (37, 51)):
        x = torch.rand(1, 1, h, w, generator=gen) * (219.0 / 255.0) + 16.0 / 255.0
        y_u8 = np.rint(x.numpy()[0, 0] * 255).astype(np.uint8)
        x = torch.from_numpy(y_u8.astype(np.float32) / 255.0)[None, None]
        with torch.no_grad():
            ref = reference(x).numpy()[0, 0]
            folded = model(x).numpy()[0, 0]
        worst = max(worst, float(np.abs(run(y_u8) - ref).max()), float(np.abs(folded - ref).max()))
    return worst


# ---------------------------------------------------------------- OpenCV .pb peers (Y-only)

@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV logs each failed importer attempt at ERROR level; the skip line says it once."""
    import cv2

    utils = getattr(getattr(cv2, "utils", None), "logging", None)
    if utils is None:
        yield
        return
    level = utils.getLogLevel()
    utils.setLogLevel(utils.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        utils.setLogLevel(level)


class DnnLuma:
    """A Y-only ``.pb`` in cv2.dnn: uint8 LR luma in, uint8 SR luma out."""

    def __init__(self, path: Path, threads: int) -> None:
        import cv2

        cv2.setNumThreads(threads)
        self.net = cv2.dnn.readNetFromTensorflow(str(path))
        self.name = Path(path).stem

    def upscale_luma(self, y: np.ndarray) -> np.ndarray:
        self.net.setInput((y.astype(np.float32) / 255.0)[None, None])
        out = self.net.forward()[0, 0]
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def probe_dnn_peers(peers: Path) -> tuple[list[tuple[str, Path]], list[dict]]:
    """The ``.pb`` peers the installed OpenCV can run, or a skip entry saying why it cannot."""
    import cv2

    found, skipped = [], []
    for label, rel in DNN_PEERS:
        path = Path(peers) / rel
        if not path.is_file():
            skipped.append({"name": label, "reason": f"{path} not found"})
            continue
        try:
            with quiet_opencv():
                DnnLuma(path, 1).upscale_luma(np.full((24, 32), 128, np.uint8))
        except cv2.error as exc:
            lines = [ln.strip(" >") for ln in str(exc).splitlines() if ln.strip(" >")]
            first = next((ln for ln in lines if "required" in ln), lines[-1] if lines else repr(exc)).rstrip(":")
            skipped.append({"name": label, "reason": (
                f"cv2.dnn {cv2.__version__} (headless, no contrib) cannot run it: the graph's DepthToSpace "
                f"layer is registered by opencv-contrib's dnn_superres, not installed here ({first})")})
            continue
        found.append((label, path))
    return found, skipped


# ---------------------------------------------------------------- for quality evaluation

@dataclass
class PeerUpscaler:
    """A peer ready for ``models.evaluate``: LR luma uint8 -> SR luma float 0..1."""

    name: str
    upscale: Callable[[np.ndarray], np.ndarray]
    params: int | None
    note: str


def peer_upscalers(peers: Path, workdir: Path, threads: int = 2) -> tuple[list[PeerUpscaler], list[dict]]:
    """Every runnable peer under ``peers`` as a luma upscaler; the rest as skips with reasons."""
    from models.evaluate import onnx_upscaler

    peers = Path(peers)
    if not peers.is_dir():
        raise FileNotFoundError(f"peer folder not found: {peers}")
    found: list[PeerUpscaler] = []
    with quiet_opencv():
        dnn, skipped = probe_dnn_peers(peers)
    for label, path in dnn:
        net = DnnLuma(path, threads)
        found.append(PeerUpscaler(label, lambda y, n=net: n.upscale_luma(y) / 255.0, None, DNN_NOTE))
    exported, skip = export_torch_peers(peers, workdir)
    skipped += skip
    for peer in exported:
        if not peer.ok:
            skipped.append({"name": peer.name, "reason": f"ONNX differs from the torch model by {peer.error:.1e}"})
            continue
        found.append(PeerUpscaler(peer.name, onnx_upscaler(peer.onnx_path, threads), peer.params, PEER_NOTE))
    return found, skipped
