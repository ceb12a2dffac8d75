"""Bad inputs to every command and public entry point: one error line, a non-zero exit, no partial files.

Every case is a row of ``CASES``: the command line (built inside the test's folder), the phrase the
error line must contain (what is wrong and what to do next), and optionally a patch that makes a
write fail half-way. The test runs the CLI in-process (``batude.cli.main`` / ``export_main``), or
calls the Python API for ``api`` rows, and checks:

* a non-zero exit code (2 for errors, 130 for an interrupt);
* stderr holds exactly one line, which names the program, and no traceback (progress-bar lines,
  redrawn in a terminal or whole in a log, are not counted);
* the line contains the expected phrase(s);
* the test folder and the shared inputs are byte-for-byte as before: no output, no temporary, no
  half-written file, an old output file untouched.

Models are a 1-channel CIFAR-style ResNet-20 at 28 x 28; data commands use a 64-image subset.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch

import batude
import batude.runtime
from batude.bench.lut import table_key
from batude.cli import export_main, main
from batude.errors import BatudeError
from batude.models import resnet20
from batude.rank import select_ranks

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
needs_onnx = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
                                reason="needs batude[onnx]")
SMALL_DATA = ["--subset", "64", "--batch-size", "32", "--device", "cpu"]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="covers machines without a CUDA GPU")


# ------------------------------------------------------------------------------------- the inputs


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: harmless, but observable."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Good inputs, made once: a dense checkpoint, a plan for it and the compressed checkpoint."""
    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    meta = {"input_shape": [1, 1, 28, 28]}
    batude.save(folder / "dense.pt", model, arch="batude:resnet20", arch_kwargs={"in_channels": 1}, metadata=meta)
    plan = select_ranks(model, "2x", "uniform", input_shape=(1, 1, 28, 28)).with_arch("batude:resnet20")
    plan.save(folder / "plan.json")
    batude.apply_plan_(model, plan)
    batude.save(folder / "compressed.pt", model, plan=plan, arch="batude:resnet20", arch_kwargs={"in_channels": 1}, metadata=meta)
    return folder


@dataclass
class Files:
    """What a case builds its command line from: ``tmp`` is the case's own (checked) folder."""

    tmp: Path
    shared: Path

    @property
    def dense(self) -> Path:
        return self.shared / "dense.pt"

    @property
    def plan(self) -> Path:
        return self.shared / "plan.json"

    @property
    def compressed(self) -> Path:
        return self.shared / "compressed.pt"

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def checkpoint(self, name: str, edit: Callable[[dict], Any]) -> Path:
        """A copy of the dense checkpoint with ``edit`` applied to its payload (a dict)."""
        payload = torch.load(self.dense, weights_only=True)
        payload = edit(payload) or payload
        torch.save(payload, self.tmp / name)
        return self.tmp / name

    def plan_json(self, name: str, edit: Callable[[dict], Any]) -> Path:
        data = json.loads(self.plan.read_text())
        data = edit(data) or data
        return self.write(name, json.dumps(data))

    def lut(self, name: str, **changes: Any) -> Path:
        table = {"format": "batude-latency-table", "version": 1, "key": table_key(torch.device("cpu"), torch.float32, 1),
                 "input_shape": [1, 28, 28], "model_ms": 1.0, "other_ms": 0.5,
                 "layers": {"fc": {"name": "fc", "kind": "lowrank_linear", "dense_ms": 0.1, "grids": [[1, 2]],
                                   "ms": {"chain": [0.05, 0.08]}}}}
        table.update(changes)
        return self.write(name, json.dumps({k: v for k, v in table.items() if v is not None}))


def _first_factorised(plan: dict) -> dict:
    return next(layer for layer in plan["layers"] if layer["ranks"])


def _flip_bytes(path: Path, at: float) -> bytes:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    return bytes(data)


def _truncated_idx(f: Files) -> Path:
    header = (0x00000803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))
    f.write("fm/train-images-idx3-ubyte", header + bytes(1000))
    f.write("fm/train-labels-idx1-ubyte", (0x00000801).to_bytes(4, "big") + (0).to_bytes(4, "big"))
    return f.tmp / "fm"


# ----------------------------------------------------------------------------- simulated crashes


def _torch_save_disk_full(monkeypatch, f: Files) -> None:
    def half_written(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)


def _write_text_interrupted(monkeypatch, f: Files) -> None:
    def half_written(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as fh:
            fh.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", half_written)


def _onnx_export_crashes(monkeypatch, f: Files) -> None:
    def half_written(module, args, target, *a, **kw):
        Path(target).write_bytes(b"\x08\x07partial onnx")
        raise RuntimeError("simulated crash inside the exporter")

    monkeypatch.setattr(torch.onnx, "export", half_written)


# ---------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One bad input. ``argv(files)`` gives the command line, or for ``entry="api"`` a call to make."""

    id: str
    argv: Callable[[Files], Any]
    expect: str | tuple[str, ...]  # phrase(s) the error line must contain
    entry: str = "batude"  # "batude", "batude-export" or "api"
    patch: Callable[[Any, Files], None] | None = None
    check: Callable[[Files], None] | None = None  # more assertions after the run
    rc: int = 2
    marks: Sequence[Any] = field(default_factory=tuple)


def _no_marker(f: Files) -> None:
    assert not (f.tmp / "pwned").exists(), "code from the pickle ran"


def _malicious(f: Files, hidden: bool) -> Path:
    marker = f.tmp / "pwned"
    if hidden:  # inside the metadata of an otherwise valid batude checkpoint
        return f.checkpoint("evil.pt", lambda p: p["metadata"].__setitem__("note", _Payload(marker)))
    torch.save({"payload": _Payload(marker)}, f.tmp / "evil.pt")
    return f.tmp / "evil.pt"


def _nothing_beside_the_repository(f: Files) -> None:
    assert sorted(p.name for p in f.tmp.iterdir()) == ["m.onnx"], "wrote outside the Triton repository"


def _api_triton_traversal(f: Files):
    from batude.export.triton import TensorSpec, write_triton_model

    model = f.write("m.onnx", b"not used: the name is refused first")
    spec = [TensorSpec("input", "float32", (1, 1, 28, 28))], [TensorSpec("output", "float32", (1, 10))]
    return lambda: write_triton_model(f.tmp / "repo", "..", model, *spec, max_batch_size=0)


def _api_profile_3d(f: Files):
    from batude.nn.profile import profile_model

    return lambda: profile_model(resnet20(in_channels=1), (1, 28, 28))


def _plan(f: Files, *args: Any, model: Any = None) -> list:
    out = [] if "--out" in args else ["--out", f.tmp / "p.json"]
    return ["plan", model or f.dense, *args, *out]


def _apply(f: Files, plan: Path, model: Any = None, out: Path | None = None) -> list:
    return ["apply", model or f.dense, "--plan", plan, "--out", out or f.tmp / "m.pt"]


def _bench(f: Files, *args: Any, model: Any = None) -> list:
    return ["bench", model or f.dense, "--iters", "1", "--warmup", "0", *args]


def _export(f: Files, *args: Any, model: Any = None) -> list:
    return [model or f.dense, "--out", f.tmp / "export", *args]


def _resnet18_lut(f: Files) -> Path:
    """A (tiny, fast) table of torchvision ResNet-18 at 32x32."""
    import torchvision

    from batude.bench.lut import LatencyTable

    LatencyTable.build(torchvision.models.resnet18().eval(), (3, 32, 32), points=2, iters=1, warmup=0).save(f.tmp / "r18.json")
    return f.tmp / "r18.json"


def _resnet50_plan(f: Files) -> Path:
    """A plan for ResNet-50, whose layer names overlap ResNet-18's with other kinds (layer1.0.conv1 is a 1x1)."""
    import torchvision

    select_ranks(torchvision.models.resnet50(), "2x", "uniform", input_shape=(1, 3, 32, 32)).save(f.tmp / "p50.json")
    return f.tmp / "p50.json"


def _validate(f: Files, lut: Path, plan: Path | None = None) -> list:
    return ["lut", "validate", lut, f.dense, "--plan", plan or f.plan, "--iters", "1"]


def _train(f: Files, *args: Any) -> list:
    out = [] if "--out" in args else ["--out", f.tmp / "run"]
    return ["train", "--epochs", "1", *SMALL_DATA, *args, *out]


def _compress(f: Files, *args: Any) -> list:
    out = [] if "--out" in args else ["--out", f.tmp / "run"]
    return ["compress", f.dense, "--epochs-admm", "0", "--epochs-ft", "0", *SMALL_DATA, *args, *out]


CASES = [
    # ------------------------------------------------------------------ checkpoints (MODEL argument)
    Case("ckpt-truncated", lambda f: ["inspect", f.write("t.pt", f.dense.read_bytes()[:40_000])],
         ("truncated or corrupt", "copy it again")),
    Case("ckpt-empty", lambda f: _plan(f, "--budget", "2x", model=f.write("e.pt", b"")),
         ("empty (0 bytes)", "save or copy it again")),
    Case("ckpt-corrupt-tensor-data", lambda f: _apply(f, f.plan, model=f.write("c.pt", _flip_bytes(f.dense, 0.5))),
         ("fails its checksum", "copy the file again")),
    Case("ckpt-malicious-pickle", lambda f: _export(f, model=_malicious(f, hidden=False)),
         ("loading it could run arbitrary code", "--trust-pickle"), entry="batude-export", check=_no_marker),
    Case("ckpt-malicious-pickle-in-metadata", lambda f: _bench(f, model=_malicious(f, hidden=True)),
         ("loading it could run arbitrary code", "--trust-pickle"), check=_no_marker),
    Case("ckpt-format-version-2", lambda f: _plan(f, "--budget", "2x", model=f.checkpoint(
        "v2.pt", lambda p: p.__setitem__("version", 2))),
         ("format version 2", "use the batude that wrote it")),
    Case("ckpt-nan-weight", lambda f: _apply(f, f.plan, model=f.checkpoint(
        "nan.pt", lambda p: p["state_dict"]["layer1.0.conv1.weight"].view(-1).__setitem__(3, float("nan")))),
         ("'layer1.0.conv1.weight' contains NaN or Inf", "use an earlier checkpoint")),
    Case("ckpt-inf-weight", lambda f: _export(f, model=f.checkpoint(
        "inf.pt", lambda p: p["state_dict"]["fc.weight"].view(-1).__setitem__(0, float("inf")))),
         ("'fc.weight' contains NaN or Inf",), entry="batude-export"),
    Case("ckpt-is-an-onnx-file", lambda f: _bench(f, model=f.write("model.onnx", b"\x08\x07not really onnx")),
         ("is an exported model, not a checkpoint", "batude.runtime.load")),
    Case("ckpt-missing", lambda f: ["lut", "build", f.tmp / "nope.pt", "--out", f.tmp / "l.json"],
         ("not found", "check the path")),
    Case("ckpt-already-compressed", lambda f: _plan(f, "--budget", "2x", model=f.compressed),
         ("already compressed", "start from the dense model")),
    # ------------------------------------------------------------------------------------ rank plans
    Case("plan-format-version-2", lambda f: _apply(f, f.plan_json("v2.json", lambda d: d.__setitem__("version", 2))),
         ("format version 2 is not supported", "regenerate the plan")),
    Case("plan-not-a-plan", lambda f: _export(f, "--plan", f.write("list.json", "[1, 2, 3]")),
         ("not a batude rank plan", "batude plan"), entry="batude-export"),
    Case("plan-not-utf8", lambda f: _apply(f, f.write("bin.json", b"\xff\xfe\x00 binary")),
         ("not valid JSON", "regenerate it")),
    Case("plan-for-another-arch", lambda f: _apply(f, f.plan, model="batude:resnet32"),
         ("was made for batude:resnet20", "make a plan for this model")),
    Case("plan-for-another-arch-export", lambda f: _export(f, "--plan", f.plan, model="batude:resnet32"),
         ("was made for batude:resnet20",), entry="batude-export"),
    Case("plan-unknown-layer", lambda f: _apply(f, f.plan_json(
        "u.json", lambda d: _first_factorised(d).__setitem__("name", "layer9.0.conv1"))),
         ("'layer9.0.conv1', which this model does not have", "batude plan")),
    Case("plan-ranks-above-dims", lambda f: _export(f, "--plan", f.plan_json(
        "big.json", lambda d: _first_factorised(d).__setitem__("ranks", [999, 999]))),
         ("ranks [999, 999] are impossible", "make a new one"), entry="batude-export"),
    Case("plan-rank-zero", lambda f: _bench(f, "--plan", f.plan_json(
        "zero.json", lambda d: _first_factorised(d).__setitem__("ranks", [0, 4]))),
         ("ranks [0, 4] are impossible",)),
    Case("plan-names-a-batchnorm", lambda f: _apply(f, f.plan_json(
        "bn.json", lambda d: _first_factorised(d).__setitem__("name", "layer1.0.bn1"))),
         ("not factorisable (BatchNorm2d)", "batude plan")),
    Case("plan-zero-totals", lambda f: _apply(f, f.plan_json("z.json", lambda d: d["totals"].__setitem__("macs", 0))),
         ("malformed", "regenerate it")),
    # --------------------------------------------------------------------------------------- budgets
    Case("budget-does-not-parse", lambda f: _compress(f, "--budget", "2.5y"), ("does not parse", "e.g. '2.52x'")),
    Case("budget-below-1x", lambda f: _plan(f, "--budget", "0.5x"), ("asks for no compression", "must be > 1")),
    Case("budget-100-percent", lambda f: _plan(f, "--budget", "100%"), ("between 0% and 100%",)),
    Case("budget-mixes-units", lambda f: _plan(f, "--budget", "params:2GMAC"), ("mixes a params: prefix",)),
    Case("budget-below-min-ranks", lambda f: _plan(f, "--budget", "20x", "--min-rank", "16"),
         ("infeasible", "loosen the budget")),
    Case("budget-params-infeasible", lambda f: _plan(f, "--budget", "params:1000x"), ("infeasible", "loosen the budget")),
    # ----------------------------------------------------------------------------------- input shapes
    Case("input-zero-size", lambda f: ["inspect", f.dense, "--input", "1,1,0,28"], ("four positive sizes",)),
    Case("input-three-dims", lambda f: _plan(f, "--budget", "2x", "--input", "1,28,28"), ("must be N,C,H,W",)),
    Case("input-five-dims", lambda f: _bench(f, "--input", "1,1,1,28,28"), ("must be N,C,H,W",)),
    Case("input-wrong-channels", lambda f: _bench(f, "--input", "1,3,28,28"),
         ("does not run on input shape [1, 3, 28, 28]", "pass the right input shape")),
    Case("export-input-two-dims", lambda f: _export(f, "--input-shape", "28,28"),
         ("three positive per-image sizes C,H,W",), entry="batude-export"),
    Case("export-input-zero", lambda f: _export(f, "--input-shape", "1,0,28"), ("must be positive",), entry="batude-export"),
    Case("api-profile-three-dims", _api_profile_3d, ("does not run on input shape",), entry="api"),
    # ----------------------------------------------------------------------------------------- data
    Case("data-missing", lambda f: _compress(f, "--budget", "2x", "--data-dir", f.tmp / "nowhere"),
         ("apt-get install dataset-fashion-mnist", "--data-dir")),
    Case("demo-params-budget", lambda f: ["demo", "--budget", "params:2x", "--out", f.tmp / "demo"],
         ("the demo compares FLOPs", "such as 2.52x")),
    Case("demo-out-is-a-file", lambda f: ["demo", "--out", f.write("demo", "x")], ("is a file", "give a folder with --out")),
    Case("data-missing-demo", lambda f: ["demo", "--data-dir", f.tmp / "nowhere", "--out", f.tmp / "demo"],
         ("apt-get install dataset-fashion-mnist", "--data-dir")),
    Case("data-truncated", lambda f: _train(f, "--data-dir", _truncated_idx(f)), ("is truncated", "dataset-fashion-mnist")),
    Case("data-cifar-without-dir", lambda f: _train(f, "--data", "cifar10"), ("no default location", "--data-dir")),
    Case("data-subset-zero", lambda f: ["train", "--subset", "0", "--out", f.tmp / "run"], ("must be a positive integer",)),
    Case("train-compile-mode-unknown", lambda f: ["train", "--compile", "fast", "--out", f.tmp / "run"],
         ("invalid choice: 'fast'", "reduce-overhead")),
    # -------------------------------------------------------------------------------------- outputs
    Case("out-unwritable", lambda f: _plan(f, "--budget", "2x", "--out", "/sys/p.json"),
         ("cannot write /sys/p.json", "choose a writable output path")),
    Case("out-parent-is-a-file", lambda f: _apply(f, f.plan, out=f.write("file", "x") / "m.pt"),
         ("is a file, not a folder", "choose another output path")),
    Case("out-is-a-folder", lambda f: _apply(f, f.plan, out=f.write("dir/keep", "x").parent),
         ("it is a folder", "give a file name")),
    Case("out-would-overwrite-the-model", lambda f: _plan(f, "--budget", "2x", "--out", f.tmp / "d.pt",
                                                          model=f.write("d.pt", f.dense.read_bytes())),
         ("would be overwritten", "choose another --out")),
    Case("out-would-overwrite-the-plan", lambda f: _apply(f, f.write("p.json", f.plan.read_bytes()), out=f.tmp / "p.json"),
         ("would be overwritten",)),
    Case("out-holds-a-run", lambda f: _train(f, "--out", f.write("run/state.pt", b"old run").parent),
         ("already holds a run", "pass --resume"), marks=(needs_data,)),
    Case("out-resume-corrupt-state", lambda f: _compress(f, "--budget", "2x", "--resume",
                                                         "--out", f.write("run/state.pt", b"junk").parent),
         ("cannot resume", "remove it to start over"), marks=(needs_data,)),
    Case("bench-out-is-a-file", lambda f: _bench(f, "--out", f.write("file", "x")), ("is a file", "--out")),
    Case("export-triton-repo-is-a-file", lambda f: _export(f, "--triton-repo", f.write("repo", "x")),
         ("is a file", "give a folder with --triton-repo"), entry="batude-export"),
    Case("lut-out-folder-missing", lambda f: ["lut", "build", f.dense, "--out", f.tmp / "no" / "l.json"],
         ("does not exist", "create it first")),
    Case("api-triton-model-name-traversal", _api_triton_traversal,
         ("not a relative name inside", "without '/' at the start or '..'"), entry="api", check=_nothing_beside_the_repository),
    # ------------------------------------------------------------------------------ interrupted writes
    Case("write-disk-full-keeps-old-checkpoint", lambda f: _apply(f, f.plan, out=f.write("m.pt", f.compressed.read_bytes())),
         ("No space left on device", "free disk space"), patch=_torch_save_disk_full),
    Case("write-interrupted-keeps-old-plan", lambda f: _plan(f, "--budget", "3x",
                                                             "--out", f.write("p.json", f.plan.read_bytes())),
         ("interrupted", "run the command again"), patch=_write_text_interrupted, rc=130),
    Case("write-onnx-export-crash-leaves-no-folder", lambda f: _export(f), ("ONNX export (dynamo) failed", "--legacy-exporter"),
         entry="batude-export", patch=_onnx_export_crashes, marks=(needs_onnx,)),
    # ----------------------------------------------------------------------------------- latency tables
    Case("lut-for-another-device", lambda f: _validate(f, f.lut("l.json", key={
        **table_key(torch.device("cpu"), torch.float32, 1), "device": "cuda", "hardware": "NVIDIA H100 80GB HBM3"})),
         ("measured elsewhere", "batude lut build")),
    Case("lut-without-layers", lambda f: _validate(f, f.lut("l.json", layers=None)), ("malformed", "batude lut build")),
    Case("lut-layer-with-unknown-fields", lambda f: _validate(f, f.lut("l.json", layers={"fc": {"speed": 1}})),
         ("malformed", "batude lut build")),
    Case("lut-for-another-model", lambda f: _validate(f, f.lut("l.json")), ("has no layer", "build one for this model")),
    Case("lut-wrong-version", lambda f: _validate(f, f.lut("l.json", version=7)),
         ("not a batude latency table of version 1", "batude lut build")),
    Case("lut-show-plan-for-another-model", lambda f: ["lut", "show", f.lut("l.json"), "--plan", f.plan],
         ("has no layer", "build one for this model")),
    Case("lut-show-plan-of-another-architecture", lambda f: ["lut", "show", _resnet18_lut(f), "--plan", _resnet50_plan(f)],
         ("does not match the table's", "the plan is for another model")),
    Case("lut-show-missing-table", lambda f: ["lut", "show", f.tmp / "nope.json"], ("nope.json",)),
    Case("lut-build-one-point", lambda f: ["lut", "build", f.dense, "--points", "1", "--iters", "1", "--out", f.tmp / "l.json"],
         ("points >= 2", "--points 4")),
    # -------------------------------------------------------------------------------- bench options
    Case("bench-batch-zero", lambda f: _bench(f, "--batch", "1,0"), ("'0' in '1,0' is not valid", "positive batch sizes")),
    Case("bench-unknown-backend", lambda f: _bench(f, "--backend", "eager,tvm"), ("'tvm'", "backends from eager")),
    Case("bench-unknown-device", lambda f: _bench(f, "--device", "tpu"), ("unknown device 'tpu'", "use cpu, cuda")),
    Case("lut-unknown-device", lambda f: ["lut", "build", f.dense, "--device", "tpu", "--out", f.tmp / "l.json"],
         ("unknown device 'tpu'",)),
    Case("bench-zero-iterations", lambda f: ["bench", f.dense, "--iters", "0"], ("whole number >= 1",)),
    Case("apply-negative-hooi-iterations", lambda f: [*_apply(f, f.plan), "--hooi-iters", "-3"], ("whole number >= 0",)),
    Case("bench-cuda-without-a-gpu", lambda f: _bench(f, "--device", "cuda:1"),
         ("nothing could be measured", "CUDA is not available", "--device cpu"), marks=(no_gpu,)),
    Case("bench-out-unwritable", lambda f: _bench(f, "--out", "/proc/batude_lat"),
         ("cannot write output folder /proc/batude_lat", "choose another --out")),
    Case("lut-cuda-without-a-gpu", lambda f: ["lut", "build", f.dense, "--device", "cuda", "--out", f.tmp / "l.json"],
         ("CUDA is not available", "--device cpu"), marks=(no_gpu,)),
    Case("lut-fp16-on-the-cpu", lambda f: ["lut", "build", f.dense, "--dtype", "fp16", "--out", f.tmp / "l.json"],
         ("fp16 on the CPU is not a meaningful latency target", "--dtype fp32")),
    # ------------------------------------------------------------------------ exported models (runtime)
    Case("runtime-onnx-that-is-not-onnx",
         lambda f: (lambda p=f.write("model.onnx", b"PK\x03\x04 nope"): batude.runtime.load(p)),
         ("not a loadable ONNX model", "re-export it"), entry="api", marks=(needs_onnx,)),
    Case("runtime-unknown-format", lambda f: (lambda p=f.write("model.bin", b"x"): batude.runtime.load(p)),
         ("unknown model format", "expected .onnx or .plan"), entry="api"),
]


# ---------------------------------------------------------------------------------------- the test


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder below ``folder`` (hidden ones included) with its content hash."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def _run(case: Case, target: Any, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    if case.entry == "api":
        try:
            target()
        except BatudeError as err:
            return 2, "", f"{err}\n"
        return 0, "", ""
    entry = export_main if case.entry == "batude-export" else main
    rc = entry([str(a) for a in target])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


_PROGRESS = re.compile(r".* \[[# ]+\] \d+/\d+( |$)")  # a progress bar's line (outside a terminal it is not redrawn in place)


def _the_error_line(err: str, entry: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.split("\n") if line and not line.startswith("\r") and not _PROGRESS.match(line)]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    if entry != "api":
        assert re.match(r"batude(-export)?( [a-z]+)*: (error: |interrupted)", lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path, shared, capsys, monkeypatch):
    files = Files(tmp_path, shared)
    target = case.argv(files)
    before = _snapshot(tmp_path), _snapshot(shared)
    if case.patch is not None:
        case.patch(monkeypatch, files)

    rc, out, err = _run(case, target, capsys)
    monkeypatch.undo()

    assert rc == case.rc, f"exit code {rc}, expected {case.rc}; stderr: {err!r}"
    line = _the_error_line(err, case.entry)
    for phrase in (case.expect,) if isinstance(case.expect, str) else case.expect:
        assert phrase in line, f"{phrase!r} not in {line!r}"
    assert not re.search(r"^(wrote|exported) ", out, re.M), out  # stdout may show progress steps, never success
    assert (_snapshot(tmp_path), _snapshot(shared)) == before, "files were created, changed or left behind"
    if case.check is not None:
        case.check(files)


def test_the_suite_is_comprehensive(tmp_path, shared, capsys):
    """At least 30 distinct cases, covering every command of both console scripts and the Python API."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    covered = set()
    for i, case in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        target = case.argv(Files(tmp_path / str(i), shared))
        covered.add(case.entry if case.entry != "batude" else " ".join(str(a) for a in target[:2 if target[0] == "lut" else 1]))
    with capsys.disabled():
        print(f"\n{len(CASES)} bad-input cases ({sum(bool(c.marks) for c in CASES)} marked skip/xfail); covered: {sorted(covered)}")
    assert len(CASES) >= 30
    assert covered >= {"inspect", "plan", "apply", "train", "compress", "bench", "lut build", "lut validate", "lut show", "demo",
                       "batude-export", "api"}
