"""Which model the server runs: a name from ``srtc/zoo/manifest.json`` or a path, loaded once at start-up
and checked on this CPU (``srtc.server.selfcheck``) before it serves anyone."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from srtc.zoo import MANIFEST_PATH, load_manifest, resolve, sha256_of

from .engine import BicubicUpscaler, ModelError, OnnxUpscaler, Upscaler
from .selfcheck import CheckImagesMissing, CheckResult, check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What ``/stats`` and the page say about a model: what it is, and how it fared on this CPU.

    ``reference``: the fp32 model an int8 build was made from (the manifest's ``"reference"``).
    ``check``: its self-check here; ``refused``: the checks of models that failed and were replaced by this one.
    """

    name: str
    path: str
    kind: str
    precision: str
    params: int | None
    reference: str | None = None
    check: CheckResult | None = None
    refused: tuple[CheckResult, ...] = ()

    def to_json(self) -> dict:
        out = asdict(self)
        out["check"] = self.check.to_json() if self.check else None
        out["refused"] = [r.to_json() for r in self.refused]
        return out


BICUBIC = ModelInfo("bicubic", "", "baseline", "none", 0)


def _entries(manifest_path: Path) -> dict:
    return load_manifest(manifest_path).get("models", {}) if manifest_path.is_file() else {}


def describe(name_or_path: str | None, manifest_path: Path = MANIFEST_PATH) -> ModelInfo:
    """Resolve a model and collect its manifest entry; a path outside the manifest gets what is known."""
    try:
        path = resolve(name_or_path, manifest_path)
    except (FileNotFoundError, KeyError) as exc:
        raise ModelError(str(exc)) from exc
    for name, entry in _entries(manifest_path).items():
        if (manifest_path.parent / entry["file"]).resolve() == path.resolve():
            if entry.get("sha256") and sha256_of(path) != entry["sha256"]:
                raise ModelError(
                    f"{path} is not the file {manifest_path.name} lists for {name} (its sha256 differs): "
                    "reinstall the package, or re-export the model to update the manifest"
                )
            return ModelInfo(
                name,
                str(path),
                entry.get("kind", "?"),
                entry.get("precision", "?"),
                entry.get("params"),
                entry.get("reference"),
            )
    return ModelInfo(path.stem, str(path), "custom", "?", None)


def fallback_of(info: ModelInfo, manifest_path: Path = MANIFEST_PATH) -> str | None:
    """The manifest's faster stand-in for a model (its ``"fallback"`` entry), if it names one."""
    return _entries(manifest_path).get(info.name, {}).get("fallback")


def open_fast_model(
    choice: str, info: ModelInfo, threads: int, manifest_path: Path = MANIFEST_PATH
) -> tuple[OnnxUpscaler | None, ModelInfo | None]:
    """The governor's faster model: ``"none"``, ``"auto"`` (the manifest's fallback of ``info``, if any and
    present) or a name or path (which must load, or :class:`ModelError`).

    A fast model that fails its self-check is not used (the governor then goes straight to bicubic, never
    to something worse): the answer is ``(None, its info)``, so ``/stats`` can say why.
    """
    if choice == "none":
        return None, None
    name = fallback_of(info, manifest_path) if choice == "auto" else choice
    if name is None:
        return None, None
    try:
        fast_info = describe(name, manifest_path)
        fast = OnnxUpscaler(Path(fast_info.path), threads=threads, name=fast_info.name)
    except ModelError as exc:
        if choice != "auto":
            raise
        log.warning("no fast model (%s): under load the SR stage goes straight to bicubic", exc)  # serve anyway
        return None, None
    result = _check(fast, fast_info, threads, manifest_path)
    if not result.passed:
        log.error(
            "refusing the fast model %s on this CPU: %s; under load the SR stage goes straight to bicubic",
            fast_info.name,
            result.reason,
        )
        return None, replace(fast_info, check=result)
    log.info("self-check %s: %s", fast_info.name, result.reason)
    return fast, replace(fast_info, check=result)


def open_model(
    name_or_path: str | None, threads: int, manifest_path: Path = MANIFEST_PATH
) -> tuple[Upscaler, ModelInfo]:
    """The upscaler the server shares between sessions; raises :class:`ModelError` naming the path.

    A model that loads but fails its self-check is replaced by its fp32 reference when that passes, else
    by bicubic; the log and ``ModelInfo.refused`` say so.
    """
    info = describe(name_or_path, manifest_path)
    upscaler = OnnxUpscaler(Path(info.path), threads=threads, name=info.name)
    result = _check(upscaler, info, threads, manifest_path)
    if result.passed:
        log.info("self-check %s: %s", info.name, result.reason)
        return upscaler, replace(info, check=result)
    log.error("refusing model %s on this CPU: %s", info.name, result.reason)
    if info.reference:
        ref, ref_info = _open_reference(info, threads, manifest_path)
        if ref is not None and ref_info is not None:
            ref_result = _check(ref, ref_info, threads, manifest_path)
            if ref_result.passed:
                log.warning("serving %s (%s) instead", ref_info.name, ref_result.reason)
                return ref, replace(ref_info, check=ref_result, refused=(result,))
    log.warning("serving bicubic instead of %s", info.name)
    return BicubicUpscaler(), replace(BICUBIC, refused=(result,))


def _open_reference(info: ModelInfo, threads: int, manifest_path: Path) -> tuple[OnnxUpscaler | None, ModelInfo | None]:
    try:
        ref_info = describe(info.reference, manifest_path)
        return OnnxUpscaler(Path(ref_info.path), threads=threads, name=ref_info.name), ref_info
    except ModelError as exc:
        log.warning("%s's reference %s cannot be opened: %s", info.name, info.reference, exc)
        return None, None


def _check(upscaler: OnnxUpscaler, info: ModelInfo, threads: int, manifest_path: Path) -> CheckResult:
    """Self-check ``upscaler`` on this CPU, against its fp32 reference when the manifest names one."""
    ref, ref_info = _open_reference(info, threads, manifest_path) if info.reference else (None, None)
    try:
        return check(
            info.name,
            upscaler.upscale_luma,
            (ref_info.name, ref.upscale_luma) if ref is not None and ref_info is not None else None,
        )
    except CheckImagesMissing as exc:
        raise ModelError(f"cannot check {info.name} on this CPU: {exc}") from exc
