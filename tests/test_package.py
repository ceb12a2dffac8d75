"""Packaging and architecture invariants: lean import, no CUDA at import, layering, kernels path."""

import ast
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import batude

ROOT = Path(__file__).resolve().parents[1]

# One-way layering (STYLE.md): a module may import only from its own level or below.
LEVELS = {
    "_version": 0, "errors": 0, "_format": 0, "_io": 0, "_device": 0,
    "functional": 1, "kernels": 1,
    "nn": 2, "models": 2, "data": 2,
    "rank": 3,
    "checkpoint": 4, "train": 4,
    "export": 5, "runtime": 5, "bench": 5,
    "demo": 6, "cli": 6, "__main__": 7, "__init__": 7,
}


def test_import_is_lean_and_does_not_touch_cuda():
    code = (
        "import sys, batude, torch\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnx', 'onnxruntime', 'tensorrt', 'triton', 'torchvision', 'matplotlib', 'tensorly'))\n"
        "print(heavy, torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] False"


def test_version_single_sourced():
    assert importlib.metadata.version("batude") == batude.__version__
    assert "version=version[\"__version__\"]" in (ROOT / "setup.py").read_text()


def test_kernels_importable_from_the_package():
    spec = importlib.util.find_spec("batude.kernels")
    assert spec is not None and Path(spec.origin) == ROOT / "kernels" / "__init__.py"


def _level(module: str) -> int:
    parts = module.split(".")
    return LEVELS[parts[1]] if len(parts) > 1 else LEVELS["__init__"]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batude"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("batude"))
    return found


def _package_files():
    """Every module of the installed package: ``batude/`` plus the top-level ``kernels/`` as ``batude.kernels``."""
    for path in sorted((ROOT / "batude").rglob("*.py")):
        yield path, path.relative_to(ROOT).with_suffix("")
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        yield path, Path("batude") / path.relative_to(ROOT).with_suffix("")


def test_dependencies_point_one_way():
    violations = []
    for path, rel in _package_files():
        module = ".".join(rel.parts)
        own = _level(module if rel.name != "__init__" or len(rel.parts) > 2 else "batude.__init__")
        for imported in _imports(path):
            if imported != "batude" and _level(imported) > own:
                violations.append(f"{module} imports {imported}")
    assert not violations, violations
    # the checker itself can fail: a higher-level import from a low level is flagged
    assert _level("batude.cli") > _level("batude.functional.cost")
    assert _level("batude.nn.tucker_conv") > _level("batude.kernels.tucker2")
    assert any(rel.parts[:2] == ("batude", "kernels") for _, rel in _package_files())


def test_export_help_needs_only_the_base_install():
    code = (
        "import sys\n"
        "from batude.cli import export_main\n"
        "rc = export_main(['--help'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript', 'tensorrt', 'tritonclient'))\n"
        "print(rc, heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("usage: batude-export") and proc.stderr.strip() == "0 []"
