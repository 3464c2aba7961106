"""Which model the server runs: a name from ``models/manifest.json`` or a path, loaded once at start-up."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from models.manifest import MANIFEST_PATH, load_manifest, resolve

from .engine import ModelError, OnnxUpscaler


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


def open_model(name_or_path: str | None, threads: int) -> tuple[OnnxUpscaler, ModelInfo]:
    """The upscaler the server shares between sessions; raises :class:`ModelError` naming the path."""
    info = describe(name_or_path)
    return OnnxUpscaler(Path(info.path), threads=threads, name=info.name), info
