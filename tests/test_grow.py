"""srtc.training.grow: a trained full-resolution generator made one body conv deeper, keeping what it learnt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, load_photo_rgb

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")

from srtc.training.arch import build, fused  # noqa: E402
from srtc.training.grow import deepen, main  # noqa: E402
from srtc.training.train import model_config, parse_config  # noqa: E402

PARENT = REPO / "checkpoints" / "fidelity_x2_parent.pt"  # what fidelity_x2 was grown from


@pytest.fixture(scope="module")
def parent() -> dict:
    return torch.load(PARENT, map_location="cpu", weights_only=False)


def luma(height: int = 96, width: int = 128) -> torch.Tensor:
    """A real photograph's luma (BT.601), as the generator takes it."""
    rgb = load_photo_rgb(width, height).astype(np.float32) / 255.0
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return torch.from_numpy(y)[None, None]


def run(ckpt: dict, x: torch.Tensor) -> torch.Tensor:
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return model.eval()(x)


def test_the_new_conv_is_the_identity_and_every_other_weight_is_the_parents(parent: dict) -> None:
    grown = deepen(parent, at=2)
    widths = parent["config"]["widths"]  # M5C16: the head and five body convs, 16 features each
    assert grown["config"]["widths"] == [widths[0]] * (len(widths) + 1)
    assert grown["grown_from"]["inserted_at"] == 2
    child, old = build(grown["config"]), build(parent["config"])
    child.load_state_dict(grown["model"])  # strict: the checkpoint is complete
    old.load_state_dict(parent["model"])
    plain = fused(child)
    c = widths[0]
    eye = torch.zeros(c, c, 3, 3)
    eye[:, :, 1, 1] = torch.eye(c)
    assert torch.allclose(plain.body[2].weight, eye, atol=1e-5)
    assert plain.body[2].bias.abs().max() < 1e-5
    pairs = [
        (child.head, old.head),
        (child.body[0], old.body[0]),
        (child.body[1], old.body[1]),
        *[(child.body[i + 1], old.body[i]) for i in range(2, len(old.body))],
        (child.tail, old.tail),
    ]
    for new, was in pairs:
        for a, b in zip(new.state_dict().values(), was.state_dict().values()):
            assert torch.equal(a, b)
    # The new block's branches keep their random start, so each has gradients from the first step.
    assert child.body[2].expand.weight.abs().sum() > 0 and child.body[2].squeeze.weight.abs().sum() > 0


def test_an_offset_keeps_the_parents_output_inside_the_image(parent: dict) -> None:
    """A plain identity passes the activation twice on the negative side; an offset above the features'
    depth below zero keeps the parent's output exactly, away from the border the zero padding touches."""
    x = luma()
    ref = run(parent, x)
    inner = (..., slice(12, -12), slice(12, -12))
    exact = run(deepen(parent, at=2, offset=10.0), x)
    assert (exact - ref)[inner].abs().max() < 1e-4
    plain = run(deepen(parent, at=2, offset=0.0), x)
    assert (plain - ref)[inner].abs().max() > 1e-3  # the caveat the offset exists for is real
    assert exact.shape == plain.shape == ref.shape == (1, 1, 192, 256)


def test_the_grown_checkpoint_is_what_models_train_init_expects(parent: dict, tmp_path: Path) -> None:
    out = tmp_path / "grown.pt"
    main(["--ckpt", str(PARENT), "--out", str(out), "--at", "1", "--val", ""])
    grown = torch.load(out, map_location="cpu", weights_only=False)
    args = parse_config(["--out", "x", "--full-res", "--reparam", "--widths", ",".join(["16"] * 7), "--steps", "1"])
    assert grown["config"] == model_config(args)  # srtc.training.train --init compares exactly this


@pytest.mark.parametrize("at", [-1, 6])
def test_a_position_outside_the_body_is_refused(parent: dict, at: int) -> None:
    with pytest.raises(ValueError, match="--at must be in 0..5"):
        deepen(parent, at=at)


def test_the_quarter_resolution_generator_is_refused() -> None:
    ckpt = {"config": {"widths": [32, 32, 16, 16]}, "model": build({"widths": [32, 32, 16, 16]}).state_dict()}
    with pytest.raises(ValueError, match="full-resolution"):
        deepen(ckpt, at=1)
