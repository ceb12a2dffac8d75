"""``batude._io``: the path guard for names read from files, output folders, crash-safe writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batude._io import atomic_path, check_out_dir, check_parent, inside, output_dir, write_text_atomic
from batude.errors import BatudeError

# ------------------------------------------------------------------------------------------ inside


@pytest.mark.parametrize("name, expected", [
    ("model", "model"),
    ("batude_model.v2", "batude_model.v2"),
    ("a/b/config.pbtxt", "a/b/config.pbtxt"),
    ("./model", "model"),
], ids=["plain", "dots-in-name", "nested", "dot-slash"])
def test_inside_accepts_names_within_the_folder(tmp_path, name, expected):
    got = inside(tmp_path, name)
    assert got == tmp_path / expected
    assert tmp_path.resolve() in got.resolve().parents


@pytest.mark.parametrize("name, phrase", [
    ("../x", "not a relative name"),
    ("a/../../x", "not a relative name"),
    ("a/../b", "not a relative name"),  # stays inside, but '..' is refused outright
    ("..", "not a relative name"),
    ("/tmp/x", "not a relative name"),
    ("", "not a relative name"),
    ("x\0y", "not a relative name"),
    (".", "not a relative name"),  # the folder itself is no name inside it
], ids=["parent", "deep-parent", "inner-parent", "dotdot", "absolute", "empty", "nul", "the-folder-itself"])
def test_inside_refuses_names_that_leave_the_folder(tmp_path, name, phrase):
    with pytest.raises(BatudeError, match=phrase) as info:
        inside(tmp_path / "out", name)
    assert "\n" not in str(info.value)


def test_inside_refuses_a_symlink_that_escapes(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BatudeError, match="outside .*symbolic link"):
        inside(out, "link/config.pbtxt")
    with pytest.raises(BatudeError, match="outside"):
        inside(out, "link")


def test_inside_allows_a_symlink_that_stays_inside(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert inside(tmp_path, "alias/m.onnx") == tmp_path / "alias" / "m.onnx"


def test_inside_works_for_a_folder_given_through_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real", target_is_directory=True)
    assert inside(tmp_path / "via", "model") == tmp_path / "via" / "model"


def test_triton_repository_refuses_a_model_name_that_escapes(tmp_path):
    from batude.export.triton import TensorSpec, write_triton_model

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    repo = tmp_path / "repo"
    (tmp_path / "outside").mkdir()
    repo.mkdir()
    (repo / "evil").symlink_to(tmp_path / "outside", target_is_directory=True)
    io = [TensorSpec("input", "float32", (1, 1, 8, 8))], [TensorSpec("output", "float32", (1, 10))]
    for name in ("..", "evil"):
        with pytest.raises(BatudeError, match="outside|not a relative name"):
            write_triton_model(repo, name, model, *io, max_batch_size=0)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil", "m.onnx", "outside", "repo"]


# ----------------------------------------------------------------------------------- output folders


def test_check_parent_names_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BatudeError, match="is a file, not a folder"):
        check_parent(tmp_path / "f" / "out.json")
    with pytest.raises(BatudeError, match="does not exist"):
        check_parent(tmp_path / "missing" / "out.json")
    assert check_parent(tmp_path / "out.json") == tmp_path


def test_check_out_dir_creates_nothing(tmp_path):
    assert check_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_out_dir(tmp_path) == tmp_path
    (tmp_path / "f").write_text("x")
    with pytest.raises(BatudeError, match="is a file"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(BatudeError, match="cannot create output folder .* is a file"):
        check_out_dir(tmp_path / "f" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_output_dir_removes_the_folder_it_created_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "new" / "out") as out:
            assert out.is_dir()
            raise RuntimeError("crash")
    assert not (tmp_path / "new" / "out").exists()


def test_output_dir_keeps_a_folder_that_existed_or_holds_files(tmp_path):
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path):
            raise RuntimeError("crash")
    assert tmp_path.is_dir()
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "out") as out:
            (out / "report.json").write_text("{}")
            raise RuntimeError("crash")
    assert (tmp_path / "out" / "report.json").is_file()


# ---------------------------------------------------------------------------------- atomic writes


def test_failed_write_names_the_target_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "plan.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert info.value.filename == str(target)  # not the temporary's name
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.pt"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, but only half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.pt"]


def test_plot_is_written_atomically(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from batude.bench.report import plot_speedup

    results = [{"model": "compressed", "backend": "eager", "batch": 1, "speedup": 1.5, "flops_reduction": 2.0}]
    plot_speedup(results, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = (tmp_path / "speedup.png").read_bytes()

    import matplotlib.figure

    def crash(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", crash)
    with pytest.raises(OSError):
        plot_speedup(results, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").read_bytes() == old
    assert os.listdir(tmp_path) == ["speedup.png"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a file system no one can create folders in)")
def test_check_out_dir_refuses_a_place_it_cannot_write_before_any_work(tmp_path):
    with pytest.raises(BatudeError, match="cannot write output folder /proc/batude_out: /proc"):
        check_out_dir("/proc/batude_out")
    check_out_dir(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing behind
