"""Typed, validated settings: everything the command line can change, checked once at the edge."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = REPO_ROOT / "client_web"


class ConfigError(ValueError):
    """A setting is out of range; the message names the setting and the allowed range."""


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process."""

    host: str = "127.0.0.1"
    port: int = 8080
    model: str | None = None  # a manifest name or a path; None means the manifest's default
    threads: int = max(1, min(2, os.cpu_count() or 1))  # onnxruntime intra-op threads per inference
    max_sessions: int = 8
    max_body_bytes: int = 64 * 1024  # an SDP offer is a few kB; anything larger is refused with 413
    connect_timeout_s: float = 30.0  # a peer that never connects is closed after this long

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"threads must be in 1..64, got {self.threads}")
        if not 1 <= self.max_sessions <= 256:
            raise ConfigError(f"max_sessions must be in 1..256, got {self.max_sessions}")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"max_body_bytes must be in 1024..16777216, got {self.max_body_bytes}")
        if not 1.0 <= self.connect_timeout_s <= 600.0:
            raise ConfigError(f"connect_timeout_s must be in 1..600, got {self.connect_timeout_s}")
