"""Read ``srtc/zoo/manifest.json`` and turn a model name (or a path) into an ONNX file path.

Kept tiny and dependency-free so the server can import it without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = MODELS_DIR / "manifest.json"


def load_manifest(path: str | Path = MANIFEST_PATH) -> dict:
    """The manifest as a dict: ``{"default": NAME, "models": {NAME: {...}}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model manifest not found: {path}")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def resolve(name_or_path: str | Path | None = None, manifest_path: str | Path = MANIFEST_PATH) -> Path:
    """Path of a model's ONNX file.

    A name listed in the manifest (or None, meaning the manifest's default) maps to its
    ``file``, relative to the manifest's folder; anything else is taken as a path.
    Raises FileNotFoundError naming the path when the file does not exist.
    """
    manifest_path = Path(manifest_path)
    models: dict = {}
    if manifest_path.is_file():
        manifest = load_manifest(manifest_path)
        models = manifest.get("models", {})
        if name_or_path is None:
            name_or_path = manifest["default"]
    elif name_or_path is None:
        raise FileNotFoundError(f"no model given and model manifest not found: {manifest_path}")
    key = str(name_or_path)
    if key in models:
        path = manifest_path.parent / models[key]["file"]
    else:
        path = Path(name_or_path)
    if not path.is_file():
        if key not in models and path.suffix != ".onnx" and models:  # a name, misspelt or not listed
            raise FileNotFoundError(f"unknown model {key!r}: not a file, and not a name in {manifest_path.name} "
                                    f"(one of: {', '.join(sorted(models))})")
        raise FileNotFoundError(f"model file not found: {path} (for model {key!r})")
    return path
