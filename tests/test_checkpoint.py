"""Checkpoints: round trips, safe loading (no code runs from untrusted files), bad files, atomic saves.

Every file here is a real ``torch.save`` / ``torch.export.save`` file in ``tmp_path``. The models are
CIFAR ResNet-20s with one input channel at 28x28 (a few milliseconds per forward pass).
"""

from __future__ import annotations

import os
import pathlib
import random
import sys

import pytest
import torch
from torch import nn

from batude import ArchRef, BatudeError, TuckerConv2d, apply_plan_, load, load_checkpoint, load_model, save, select_ranks
from batude._version import __version__
from batude.cli import main

ARCH = "batude:resnet20"
KWARGS = {"in_channels": 1}
SHAPE = (1, 1, 28, 28)


def _dense(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ArchRef(ARCH, KWARGS).build().eval()
    # Non-trivial BatchNorm statistics so that buffers matter for the output comparison.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn((n,) + SHAPE[1:], generator=torch.Generator().manual_seed(123))


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_x())


@pytest.fixture(scope="module")
def factorised():
    model = _dense()
    plan = select_ranks(model, "2x", "uniform", input_shape=SHAPE)
    apply_plan_(model, plan)
    return model.eval(), plan


@pytest.fixture(scope="module")
def saved(factorised, tmp_path_factory):
    model, plan = factorised
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save(path, model, plan=plan, arch=ARCH, arch_kwargs=KWARGS)
    return path


@pytest.fixture
def dense_state_dict_file(tmp_path):
    model = _dense()
    path = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), path)
    return path, model


# --------------------------------------------------------------------------------------- round trip


def test_round_trip_of_a_factorised_model_is_exact(factorised, saved):
    model, plan = factorised
    assert any(isinstance(m, TuckerConv2d) for m in model.modules()), "the plan factorised nothing"

    ckpt = load_checkpoint(saved)

    assert torch.equal(_out(ckpt.model), _out(model))
    assert ckpt.plan is not None
    assert [(l.name, l.ranks) for l in ckpt.plan.layers] == [(l.name, l.ranks) for l in plan.layers]
    assert ckpt.plan == plan
    assert ckpt.arch == ArchRef(ARCH, KWARGS)
    assert ckpt.input_shape == SHAPE
    assert ckpt.model.training is False
    assert ckpt.metadata["batude"] == __version__
    assert sorted(ckpt.model.state_dict()) == sorted(model.state_dict())
    assert sum(isinstance(m, TuckerConv2d) for m in ckpt.model.modules()) == sum(
        l.ranks is not None and l.kind.value == "tucker2" for l in plan.layers
    )


def test_load_returns_the_model_in_eval_mode(factorised, saved):
    model, _ = factorised
    loaded = load(saved)
    assert isinstance(loaded, nn.Module) and not loaded.training
    assert torch.equal(_out(loaded), _out(model))


def test_model_saved_in_train_mode_loads_in_eval_mode(tmp_path):
    model = _dense().train()
    save(tmp_path / "m.pt", model, arch=ARCH, arch_kwargs=KWARGS)
    loaded = load(tmp_path / "m.pt")
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert torch.equal(_out(loaded), _out(model.eval()))


@pytest.mark.parametrize(
    "metadata, expected",
    [({"input_shape": [2, 1, 28, 28]}, (2, 1, 28, 28)), (None, (1, 1, 32, 32))],
    ids=["from-metadata", "arch-default"],
)
def test_input_shape_without_a_plan(tmp_path, metadata, expected):
    save(tmp_path / "m.pt", _dense(), arch=ARCH, arch_kwargs=KWARGS, metadata=metadata)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.plan is None
    assert ckpt.input_shape == expected


# ------------------------------------------------------------------------- no code runs from a file


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: harmless, but observable."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _malicious(tmp_path: pathlib.Path, where: str) -> tuple[pathlib.Path, pathlib.Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if where == "top-level":
        obj = {"payload": _Payload(marker)}
    else:  # hidden in the metadata of an otherwise valid batude checkpoint
        save(path, _dense(), arch=ARCH, arch_kwargs=KWARGS)
        obj = torch.load(path, weights_only=True)
        obj["metadata"]["note"] = _Payload(marker)
    torch.save(obj, path)
    return path, marker


@pytest.mark.parametrize("where", ["top-level", "inside-checkpoint"])
def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path, where):
    path, marker = _malicious(tmp_path, where)
    with pytest.raises(BatudeError, match="trust_pickle"):
        load(path)
    assert not marker.exists()


def test_malicious_pickle_payload_is_live(tmp_path):
    """Control for the test above: trusting the file does run the payload."""
    path, marker = _malicious(tmp_path, "top-level")
    with pytest.raises(BatudeError):  # the unpickled dict is no checkpoint; the code has run by then
        load(path, trust_pickle=True)
    assert marker.exists()


def test_malicious_pickle_through_the_cli(tmp_path, capsys):
    path, marker = _malicious(tmp_path, "top-level")
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("batude: error:") and "--trust-pickle" in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not marker.exists()


def test_pickled_whole_module_needs_trust_pickle(tmp_path):
    model = _dense()
    path = tmp_path / "whole.pt"
    torch.save(model, path)

    with pytest.raises(BatudeError, match="trust_pickle"):
        load(path)

    ckpt = load_checkpoint(path, trust_pickle=True)
    assert type(ckpt.model) is type(model)
    assert ckpt.metadata["format"] == "pickled module"
    assert not ckpt.model.training
    assert torch.equal(_out(ckpt.model), _out(model))


def test_torch_export_program_loads(factorised, tmp_path):
    model, _ = factorised
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (_x(1),)), path)

    ckpt = load_checkpoint(path)
    assert ckpt.metadata["format"] == "torch.export"
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(_x(1)), model(_x(1)), rtol=1e-5, atol=1e-6)


def test_garbage_pt2_is_a_batude_error(tmp_path):
    path = tmp_path / "garbage.pt2"
    path.write_bytes(random.Random(1).randbytes(2048))
    with pytest.raises(BatudeError, match="torch.export"):
        load(path)


# ------------------------------------------------------------------------------- plain state_dicts


def test_state_dict_without_arch_asks_for_it(dense_state_dict_file):
    path, _ = dense_state_dict_file
    with pytest.raises(BatudeError, match="arch"):
        load(path)


def test_state_dict_with_arch_loads(dense_state_dict_file):
    path, model = dense_state_dict_file
    ckpt = load_checkpoint(path, arch=ARCH, arch_kwargs=KWARGS)
    assert ckpt.metadata["format"] == "state_dict"
    assert ckpt.arch == ArchRef(ARCH, KWARGS)
    assert not ckpt.model.training
    assert torch.equal(_out(ckpt.model), _out(model))


def test_state_dict_with_missing_keys_is_a_batude_error(dense_state_dict_file):
    path, _ = dense_state_dict_file
    with pytest.raises(BatudeError, match="does not fit architecture batude:resnet32"):
        load(path, arch="batude:resnet32", arch_kwargs=KWARGS)


@pytest.mark.parametrize("arch", ["batude:resnet32", "batude:resnet20"], ids=["other-depth", "other-in-channels"])
def test_state_dict_with_wrong_shapes_is_a_batude_error(dense_state_dict_file, arch):
    path, _ = dense_state_dict_file  # saved from resnet20 with in_channels=1; arch builds in_channels=3
    with pytest.raises(BatudeError, match="does not fit"):
        load(path, arch=arch)


def test_state_dict_with_wrong_shapes_through_the_cli(dense_state_dict_file, capsys):
    path, _ = dense_state_dict_file
    try:
        rc = main(["inspect", str(path), "--arch", "batude:resnet32"])
    except RuntimeError:
        rc = "RuntimeError escaped main()"
    assert rc == 2
    assert capsys.readouterr().err.startswith("batude: error:")


def test_factorised_checkpoint_with_another_arch_is_a_batude_error(saved):
    # the plan is replayed onto torchvision's resnet18, whose layer1.0.conv1 is 64x64 not 16x16
    with pytest.raises(BatudeError, match="another architecture"):
        load(saved, arch="torchvision:resnet18")


# ------------------------------------------------------------------------------------- bad files


def _bad_file(tmp_path: pathlib.Path, kind: str, good: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "bad.pt"
    data = good.read_bytes()
    if kind == "truncated-head":
        path.write_bytes(data[:1000])
    elif kind == "truncated-tail":
        path.write_bytes(data[:-64])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "random-bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "json":
        path.write_text('{"format": "batude-checkpoint", "version": 1}\n')
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    else:
        raise AssertionError(kind)
    return path


BAD_FILES = ["truncated-head", "truncated-tail", "empty", "missing", "directory", "random-bytes", "json", "list"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_is_a_batude_error(tmp_path, saved, kind):
    path = _bad_file(tmp_path, kind, saved)
    with pytest.raises(BatudeError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    expected = {"truncated-head": "truncated or corrupt", "truncated-tail": "truncated or corrupt",
                "empty": "empty", "missing": "not found", "directory": "not found", "list": "holds a list"}
    if kind in expected:
        assert expected[kind] in message


def test_many_random_files_are_all_batude_errors(tmp_path):
    # torch's legacy (non-zip) reader raises IndexError, KeyError, struct.error... on garbage
    rng = random.Random(1)
    for i in range(200):
        path = tmp_path / f"g{i}.pt"
        path.write_bytes(rng.randbytes(rng.choice([1, 2, 64, 4096])))
        with pytest.raises(BatudeError):
            load(path)


@pytest.mark.parametrize("data", [b"\x81", b"r", b"h%"], ids=["IndexError", "struct.error", "KeyError"])
def test_tiny_garbage_file_is_a_batude_error(tmp_path, data):
    path = tmp_path / "garbage.pt"
    path.write_bytes(data)
    with pytest.raises(BatudeError):
        load(path)


def test_tiny_garbage_file_through_the_cli(tmp_path, capsys):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x81")
    try:
        rc = main(["inspect", str(path)])
    except IndexError:
        rc = "IndexError escaped main()"
    assert rc == 2


def test_json_file_is_not_blamed_on_pickled_objects(tmp_path, saved):
    path = _bad_file(tmp_path, "json", saved)
    with pytest.raises(BatudeError) as info:
        load(path)
    assert "trust_pickle" not in str(info.value)


@pytest.mark.parametrize("version", [2, 0, "1", None], ids=["v2", "v0", "str-1", "none"])
def test_wrong_format_version_is_refused(tmp_path, saved, version):
    obj = torch.load(saved, weights_only=True)
    obj["version"] = version
    torch.save(obj, tmp_path / "v.pt")
    with pytest.raises(BatudeError, match=f"format version {version!r};"):
        load(tmp_path / "v.pt")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["layer2.0.conv1.core.weight", "bn1.running_var", "layer3.0.shortcut.0.last.weight"])
def test_non_finite_weight_is_refused_naming_the_tensor(tmp_path, saved, name, value):
    obj = torch.load(saved, weights_only=True)
    assert name in obj["state_dict"], sorted(obj["state_dict"])
    obj["state_dict"][name].view(-1)[0] = value
    torch.save(obj, tmp_path / "nan.pt")
    with pytest.raises(BatudeError, match=f"'{name}' contains NaN or Inf"):
        load(tmp_path / "nan.pt")


def test_non_finite_weight_in_a_plain_state_dict(dense_state_dict_file, tmp_path):
    path, model = dense_state_dict_file
    sd = model.state_dict()
    sd["layer3.1.conv2.weight"][0, 0, 1, 1] = float("nan")
    torch.save(sd, path)
    with pytest.raises(BatudeError, match="'layer3.1.conv2.weight' contains NaN"):
        load(path, arch=ARCH, arch_kwargs=KWARGS)


# ---------------------------------------------------------------------------------- user factories

FACTORY_SOURCE = """\
import pathlib
pathlib.Path({marker!r}).touch()  # importing this module is observable

from batude.models.cifar_resnet import resnet20


def make(**kwargs):
    return resnet20(**kwargs)
"""


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    """A module ``batude_test_factory`` that creates ``imported`` when imported; and a file naming it."""
    name = "batude_test_factory"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    model = _dense()
    path = tmp_path / "factory.pt"
    save(path, model, arch=f"{name}:make", arch_kwargs=KWARGS)
    yield path, f"{name}:make", marker, model
    sys.modules.pop(name, None)


def test_user_factory_named_in_a_file_is_not_imported(user_factory):
    path, ref, marker, _ = user_factory
    with pytest.raises(BatudeError, match=f"user factory '{ref}'"):
        load(path)
    assert not marker.exists()
    assert ref.split(":")[0] not in sys.modules


def test_user_factory_named_in_a_file_is_not_imported_by_the_cli(user_factory, capsys):
    path, ref, marker, _ = user_factory
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("batude: error:") and f"--arch {ref}" in err and err.count("\n") == 1
    assert not marker.exists()


def test_user_factory_given_explicitly_is_used(user_factory):
    path, ref, marker, model = user_factory
    ckpt = load_checkpoint(path, arch=ref, arch_kwargs=KWARGS)
    assert marker.exists()  # control: importing the factory does create the marker
    assert ckpt.arch == ArchRef(ref, KWARGS)
    assert torch.equal(_out(ckpt.model), _out(model))


def test_cli_arch_override_for_a_trusted_factory_keeps_the_files_kwargs(user_factory, capsys):
    path, ref, _, _ = user_factory
    assert main(["inspect", str(path), "--arch", ref, "--input", "1,1,28,28"]) == 0
    assert "conv1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ atomic save


def test_save_into_a_missing_folder_fails_cleanly(tmp_path):
    target = tmp_path / "nope" / "m.pt"
    with pytest.raises(BatudeError, match="does not exist"):
        save(target, _dense(), arch=ARCH, arch_kwargs=KWARGS)
    assert not target.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_leaves_no_temporary_files(tmp_path):
    save(tmp_path / "m.pt", _dense(), arch=ARCH, arch_kwargs=KWARGS)
    save(tmp_path / "m.pt", _dense(1), arch=ARCH, arch_kwargs=KWARGS)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert torch.equal(_out(load(tmp_path / "m.pt")), _out(_dense(1)))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "m.pt"
    save(target, _dense(), arch=ARCH, arch_kwargs=KWARGS)
    before = target.read_bytes()
    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        pathlib.Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        save(target, _dense(1), arch=ARCH, arch_kwargs=KWARGS)
    monkeypatch.setattr(torch, "save", real_save)

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# -------------------------------------------------------------------------------------- load_model


def test_load_model_builds_a_torchvision_architecture():
    import torchvision

    ckpt = load_model("torchvision:resnet18")
    assert isinstance(ckpt.model, torchvision.models.ResNet)
    assert ckpt.model.fc.out_features == 1000
    assert not ckpt.model.training
    assert ckpt.arch == ArchRef("torchvision:resnet18")
    assert ckpt.plan is None
    assert ckpt.input_shape == (1, 3, 224, 224)


def test_load_model_builds_the_same_weights_every_time_and_leaves_the_random_state_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = load_model("batude:resnet20").model, load_model("batude:resnet20").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), state)  # plan, then apply: one model, and the caller's seed untouched


@pytest.mark.parametrize("spec, match", [
    ("torchvision:nope", "unknown torchvision classifier 'nope'"),
    ("batude:resnet99", "unknown batude model 'resnet99'"),
    ("no_such_module_xyz:make", "cannot import model factory"),
    ("not-a-ref:!", "not of the form"),
], ids=["torchvision-unknown", "batude-unknown", "factory-unimportable", "malformed"])
def test_load_model_bad_reference(spec, match):
    with pytest.raises(BatudeError, match=match):
        load_model(spec)


def test_load_model_reads_a_checkpoint_path(factorised, saved):
    model, plan = factorised
    ckpt = load_model(str(saved))
    assert ckpt.plan == plan
    assert torch.equal(_out(ckpt.model), _out(model))


def test_load_model_missing_path_without_colon():
    with pytest.raises(BatudeError, match="not found"):
        load_model("definitely_missing_checkpoint.pt")


def test_reference_model_reads_a_bare_name_as_torchvision_and_passes_specs_and_paths_through(saved):
    from batude.checkpoint import reference_model

    bare, spec = reference_model("resnet18"), load_model("torchvision:resnet18").model
    assert not bare.training and all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(), spec.state_dict().values()))
    assert isinstance(reference_model("batude:resnet20"), nn.Module)
    assert torch.equal(_out(reference_model(str(saved))), _out(load_model(str(saved)).model))



def test_saving_onto_a_folder_is_a_clear_error_and_files_get_normal_permissions(tmp_path):
    model = _dense()
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(BatudeError, match="is a folder"):
        save(tmp_path / "folder.pt", model, arch=ARCH, arch_kwargs=KWARGS)
    save(tmp_path / "ok.pt", model, arch=ARCH, arch_kwargs=KWARGS)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "ok.pt").stat().st_mode & 0o777 == 0o666 & ~mask
