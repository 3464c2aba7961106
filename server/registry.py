"""Which model the server runs: a name from ``models/manifest.json`` or a path, loaded once at start-up."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from models.manifest import MANIFEST_PATH, load_manifest, resolve

from .engine import ModelError, OnnxUpscaler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What ``/stats`` and the page say about the running model."""

    name: str
    path: str
    kind: str
    precision: str
    params: int | None

    def to_json(self) -> dict:
        return asdict(self)


def describe(name_or_path: str | None, manifest_path: Path = MANIFEST_PATH) -> ModelInfo:
    """Resolve a model and collect its manifest entry; a path outside the manifest gets what is known."""
    try:
        path = resolve(name_or_path, manifest_path)
    except (FileNotFoundError, KeyError) as exc:
        raise ModelError(str(exc)) from exc
    entries = load_manifest(manifest_path).get("models", {}) if manifest_path.is_file() else {}
    for name, entry in entries.items():
        if (manifest_path.parent / entry["file"]).resolve() == path.resolve():
            return ModelInfo(name, str(path), entry.get("kind", "?"), entry.get("precision", "?"), entry.get("params"))
    return ModelInfo(path.stem, str(path), "custom", "?", None)


def fallback_of(info: ModelInfo, manifest_path: Path = MANIFEST_PATH) -> str | None:
    """The manifest's faster stand-in for a model (its ``"fallback"`` entry), if it names one."""
    entries = load_manifest(manifest_path).get("models", {}) if manifest_path.is_file() else {}
    return entries.get(info.name, {}).get("fallback")


def open_fast_model(choice: str, info: ModelInfo, threads: int,
                    manifest_path: Path = MANIFEST_PATH) -> tuple[OnnxUpscaler | None, ModelInfo | None]:
    """The governor's faster model: ``"none"``, ``"auto"`` (the manifest's fallback of ``info``, if any and
    present) or a name or path (which must load, or :class:`ModelError`)."""
    if choice == "none":
        return None, None
    if choice == "auto":
        name = fallback_of(info, manifest_path)
        if name is None:
            return None, None
        try:
            return open_model(name, threads, manifest_path)
        except ModelError as exc:  # the main model is there; serve without the step rather than not at all
            log.warning("no fast model (%s): under load the SR stage goes straight to bicubic", exc)
            return None, None
    return open_model(choice, threads, manifest_path)


def open_model(name_or_path: str | None, threads: int,
               manifest_path: Path = MANIFEST_PATH) -> tuple[OnnxUpscaler, ModelInfo]:
    """The upscaler the server shares between sessions; raises :class:`ModelError` naming the path."""
    info = describe(name_or_path, manifest_path)
    return OnnxUpscaler(Path(info.path), threads=threads, name=info.name), info
