"""The house: the runtime imports neither the tools nor the training code, and no module imports itself
back through others (function-level imports included, since they only hide a loop until it bites), and
everything but the training code imports without the train extra (torch, onnx)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import srtc

SRC = Path(srtc.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every srtc module ``path`` imports, at any depth of the file (``TYPE_CHECKING`` blocks excluded)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_loops() -> None:
    assert cycles(graph()) == []


def test_the_runtime_never_imports_the_tools_or_the_training_code() -> None:
    runtime = {"srtc.server", "srtc.runtime", "srtc.zoo"}
    for name, imported in graph().items():
        if any(name == r or name.startswith(r + ".") for r in runtime):
            leaks = sorted(m for m in imported if m.startswith(("srtc.tools", "srtc.training")))
            assert not leaks, f"{name} imports {leaks}"


# What only the train extra brings (its pillow comes with the test extra too, so the suite always has it).
TRAIN_ONLY = ("torch", "onnx", "tqdm")


def without_train_extra(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where TRAIN_ONLY cannot be imported (None in sys.modules)."""
    block = f"import sys\nsys.modules.update(dict.fromkeys({TRAIN_ONLY!r}))\n"
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=120)


def test_the_server_and_the_tools_import_without_the_train_extra() -> None:
    """Without the train extra the server and every tool (encoder_bench included) still run."""
    files = [*SRC.rglob("*.py"), *(SRC.parent / "server").rglob("*.py")]
    names = sorted(module_name(f) for f in files if f.stem != "__main__" and "training" not in f.parts)
    assert {"srtc.tools.encoder_bench", "srtc.tools.bench", "srtc.server.app", "server.worker"} <= set(names)
    done = without_train_extra(f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n")
    assert done.returncode == 0, done.stderr


def test_the_bench_says_what_it_needs_without_the_train_extra() -> None:
    """It counts MACs from the ONNX graphs: without onnx it says how to install it, not a traceback."""
    done = without_train_extra("from srtc.tools import bench\nbench.main(['--frames', '1'])\n")
    assert done.returncode == 2, done.stderr
    assert "pip install -e '.[train]'" in done.stderr and "Traceback" not in done.stderr


def test_the_loop_finder_finds_a_loop() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
