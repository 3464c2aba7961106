"""The shipped generators: ``manifest.json`` lists them, and a model name (or a role, or a path) turns into
an ONNX file path here.

The manifest names its roles beside its models: ``"default"`` (what the server runs unless told) and
``"fidelity"`` (the highest-PSNR model). Each entry gives the file, its sha256, kind, precision,
parameter count, the faster build the governor may step down to (``"fallback"``), a one-line
description and the recipe (``recipes/NAME.sh``) that made it. Dependency-free, so the server imports
it without torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = ZOO_DIR / "manifest.json"
ROLES = ("default", "fidelity")


def load_manifest(path: str | Path = MANIFEST_PATH) -> dict:
    """The manifest as a dict: ``{"default": NAME, "fidelity": NAME, "models": {NAME: {...}}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model manifest not found: {path}")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file, as the manifest records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve(name_or_path: str | Path | None = None, manifest_path: str | Path = MANIFEST_PATH) -> Path:
    """Path of a model's ONNX file.

    A name listed in the manifest, a role (``"default"``, ``"fidelity"``) or None (the default) maps to
    its ``file``, relative to the manifest's folder; anything else is taken as a path.
    Raises FileNotFoundError naming the path when the file does not exist.
    """
    manifest_path = Path(manifest_path)
    models: dict = {}
    manifest: dict = {}
    if manifest_path.is_file():
        manifest = load_manifest(manifest_path)
        models = manifest.get("models", {})
        if name_or_path is None:
            name_or_path = manifest["default"]
    elif name_or_path is None:
        raise FileNotFoundError(f"no model given and model manifest not found: {manifest_path}")
    key = str(name_or_path)
    if key in ROLES and manifest.get(key) in models:
        key = manifest[key]
    if key in models:
        path = manifest_path.parent / models[key]["file"]
    else:
        path = Path(name_or_path)
    if not path.is_file():
        if key not in models and path.suffix != ".onnx" and models:  # a name, misspelt or not listed
            raise FileNotFoundError(
                f"unknown model {key!r}: not a file, and not a name in {manifest_path.name} "
                f"(one of: {', '.join(sorted(models))}; or a role: {', '.join(ROLES)})"
            )
        raise FileNotFoundError(f"model file not found: {path} (for model {key!r})")
    return path
