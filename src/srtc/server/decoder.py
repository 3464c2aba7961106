"""The receive path's decoder, guarded: any exception on one frame costs that frame, never the stream.

aiortc decodes in one thread per receiver (``aiortc.rtcrtpreceiver.decoder_worker``). That thread
survives an ``av.FFmpegError``: it logs it, sets the receiver's decode-error event and goes on, and
:mod:`srtc.server.receiver` turns the event into "drop inter frames until a keyframe" and a
rate-limited PLI. Any other exception (a codec wrapper bug, ``MemoryError``, a ``ValueError`` from a
malformed frame) ends the thread instead: the track then waits forever and the session stays
"connected" with no picture. :func:`guard_decoders` makes every decoder aiortc creates raise only
``FFmpegError``, so every failure takes the path that heals.

It replaces the module-level ``get_decoder`` that ``decoder_worker`` looks up at run time, once per
process (aiortc 1.16.0, the pin :mod:`srtc.server.receiver` checks). Decoders created before the call
stay unguarded; the server calls it before its first peer connection.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import aiortc.rtcrtpreceiver as aiortc_receiver
from av.error import FFmpegError, InvalidDataError

log = logging.getLogger(__name__)


class GuardedDecoder:
    """One aiortc decoder whose every failure is an ``FFmpegError``, logged with its real cause."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def decode(self, encoded_frame: Any) -> list[Any]:
        try:
            return self.inner.decode(encoded_frame)
        except FFmpegError:
            raise
        except Exception as exc:
            log.warning("decoder raised %s on one frame: %s (the frame is dropped)", type(exc).__name__, exc)
            raise InvalidDataError(errno.EINVAL, f"decoder raised {type(exc).__name__}: {exc}") from exc


def guard_decoders() -> None:
    """Wrap every decoder aiortc creates from now on in :class:`GuardedDecoder`. Idempotent."""
    current = aiortc_receiver.get_decoder
    if getattr(current, "guarded", False):
        return

    def get_decoder(codec: Any) -> GuardedDecoder:
        return GuardedDecoder(current(codec))

    get_decoder.guarded = True  # type: ignore[attr-defined]
    aiortc_receiver.get_decoder = get_decoder  # type: ignore[assignment]  # a Decoder in all but name
