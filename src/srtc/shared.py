"""Where the measuring and training data live: ``$SRTC_SHARED``, else ``../shared`` beside the checkout.

The data (training images, benchmark sets, video clips, published peers) is never part of the
package; the tools find it here, and say so when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]  # src/srtc/shared.py -> the checkout, for an editable install


def shared_dir() -> Path:
    """``$SRTC_SHARED`` when set, else ``../shared`` next to the checkout (or next to the working directory)."""
    env = os.environ.get("SRTC_SHARED")
    if env:
        return Path(env)
    beside_checkout = _CHECKOUT.parent / "shared"
    if (_CHECKOUT / "pyproject.toml").is_file() and beside_checkout.is_dir():
        return beside_checkout
    return Path.cwd().parent / "shared"


SHARED = shared_dir()
