"""A frame number drawn into the luma plane, readable after lossy coding and 2x scaling.

Why pixels: the probe has to match every returned frame to the frame it sent, and neither RTP
timestamps nor pts survive the server's decode / upscale / re-encode. Big flat blocks do: a codec
keeps the mean (DC) of a flat 16x16 macroblock even at a low bitrate, and scaling keeps the middle
of a block untouched, so reading the mean of each block's inner part gives back the bits.

Layout at the 640x360 reference size: ``COLS x ROWS`` blocks of ``BLOCK`` px in the top-left corner,
aligned to the 16-px macroblock grid, read left to right and top to bottom. The 24 bits are a 16-bit
frame number (numbers wrap at ``2**16``: frame 65536 reads as 0) followed by a CRC-8 of it, XORed
with a constant so that an all-dark or all-bright corner is never a valid code. A bit is a dark
(``DARK``) or bright (``BRIGHT``) block. CRC-8 (poly 0x07) detects every error of up to three bits
in 24, and a block whose inner mean lies between the two levels makes the read fail outright, so a
damaged code reads as ``None`` rather than as a wrong number.

At other sizes everything scales by ``width / 640`` (1280x720 is 2x: 32-px blocks).
"""

from __future__ import annotations

import numpy as np

REF_WIDTH = 640  # the size the layout is defined at
REF_HEIGHT = 360
BLOCK = 16  # px at the reference size: one macroblock
COLS = 8
ROWS = 3
NUMBER_BITS = 16
CHECK_BITS = 8
MODULUS = 1 << NUMBER_BITS  # frame numbers wrap here
DARK = 32
BRIGHT = 224
THRESHOLD = (DARK + BRIGHT) // 2
# Inner means closer than this to the threshold are too damaged to trust (the levels are 96 away).
AMBIGUOUS = 48
CHECK_XOR = 0xA5  # keeps all-dark / all-bright blocks from being a valid code
_INNER = 0.25  # sample a block from 1/4 to 3/4 of its side: away from blurred/ringing edges

assert COLS * ROWS == NUMBER_BITS + CHECK_BITS


def crc8(value: int, nbits: int = NUMBER_BITS) -> int:
    """CRC-8 (polynomial x^8+x^2+x+1, 0x07) of the low ``nbits`` bits of ``value``, MSB first."""
    crc = 0
    for i in range(nbits - 1, -1, -1):
        bit = (value >> i) & 1
        top = (crc >> 7) & 1
        crc = (crc << 1) & 0xFF
        if bit ^ top:
            crc ^= 0x07
    return crc


def encode_bits(number: int) -> list[int]:
    """The 24 bits (MSB first) drawn for ``number`` (taken modulo 2**16)."""
    number %= MODULUS
    word = (number << CHECK_BITS) | (crc8(number) ^ CHECK_XOR)
    total = NUMBER_BITS + CHECK_BITS
    return [(word >> (total - 1 - i)) & 1 for i in range(total)]


def decode_bits(bits: list[int]) -> int | None:
    """The number, or None when the check bits do not match."""
    word = 0
    for bit in bits:
        word = (word << 1) | (bit & 1)
    number = word >> CHECK_BITS
    check = word & ((1 << CHECK_BITS) - 1)
    return number if (crc8(number) ^ CHECK_XOR) == check else None


def scale_of(width: int) -> float:
    """How much larger than the 640-px reference a plane of this width is."""
    return width / REF_WIDTH


def region(width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the code area at this size, grown by ``margin`` reference px.

    Quality figures exclude this box; a margin of a few px also covers the codec's and the
    scaler's ringing around the blocks.
    """
    s = scale_of(width)
    x1 = int(round((COLS * BLOCK + margin) * s))
    y1 = int(round((ROWS * BLOCK + margin) * s))
    return 0, 0, min(x1, width), min(y1, height)


def embed(y: np.ndarray, number: int) -> None:
    """Draw ``number`` (mod 2**16) into the luma plane ``y`` in place, at the plane's own scale."""
    s = scale_of(y.shape[1])
    _check_size(y, s)
    for i, bit in enumerate(encode_bits(number)):
        x0, y0, x1, y1 = _block_box(i, s)
        y[y0:y1, x0:x1] = BRIGHT if bit else DARK


def read(y: np.ndarray, scale: float | None = None) -> int | None:
    """The number drawn in luma plane ``y``, or None if there is no intact code.

    ``scale`` defaults to ``width / 640`` (1 for 640x360, 2 for 1280x720).
    """
    s = scale_of(y.shape[1]) if scale is None else scale
    if y.ndim != 2 or y.shape[0] < ROWS * BLOCK * s or y.shape[1] < COLS * BLOCK * s:
        return None
    bits: list[int] = []
    for i in range(COLS * ROWS):
        x0, y0, x1, y1 = _block_box(i, s, inner=True)
        mean = float(y[y0:y1, x0:x1].mean())
        if abs(mean - THRESHOLD) < AMBIGUOUS:
            return None
        bits.append(1 if mean > THRESHOLD else 0)
    return decode_bits(bits)


def _block_box(index: int, s: float, inner: bool = False) -> tuple[int, int, int, int]:
    """Pixel box of block ``index`` at scale ``s``; ``inner`` keeps only its middle half."""
    row, col = divmod(index, COLS)
    lo = _INNER if inner else 0.0
    hi = 1.0 - _INNER if inner else 1.0
    x0 = int(round((col + lo) * BLOCK * s))
    x1 = int(round((col + hi) * BLOCK * s))
    y0 = int(round((row + lo) * BLOCK * s))
    y1 = int(round((row + hi) * BLOCK * s))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _check_size(y: np.ndarray, s: float) -> None:
    if y.ndim != 2 or y.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 luma plane, got {y.dtype} {y.shape}")
    if y.shape[0] < ROWS * BLOCK * s or y.shape[1] < COLS * BLOCK * s:
        raise ValueError(f"luma plane {y.shape[1]}x{y.shape[0]} is smaller than the code area")
