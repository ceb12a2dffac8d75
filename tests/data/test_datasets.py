import ast
import gzip
import pathlib
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import batude.data as bd
from batude.data import datasets as ds_mod
from batude.errors import BatudeError

FMNIST_DIR = Path(bd.DEFAULT_FASHION_MNIST_DIR)
FMNIST_FILES = [f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
needs_fmnist = pytest.mark.skipif(
    not all((FMNIST_DIR / f).is_file() for f in FMNIST_FILES),
    reason=f"Fashion-MNIST not in {FMNIST_DIR}; install it with 'apt-get install dataset-fashion-mnist'",
)


# ---------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist():
    return bd.load_fashion_mnist()


@needs_fmnist
def test_real_fashion_mnist(fmnist):
    (tx, ty), (vx, vy) = fmnist
    assert tx.shape == (60000, 1, 28, 28) and tx.dtype == torch.uint8
    assert vx.shape == (10000, 1, 28, 28)
    assert ty.dtype == torch.int64 and ty.shape == (60000,)
    assert torch.bincount(ty).tolist() == [6000] * 10
    assert torch.bincount(vy).tolist() == [1000] * 10
    assert int(tx.max()) == 255 and int(tx.min()) == 0
    # the fixed normalisation constants are the training set's statistics
    mean, std = bd.channel_stats(tx)
    assert mean[0] == pytest.approx(ds_mod.FASHION_MNIST_MEAN[0], abs=1e-4)
    assert std[0] == pytest.approx(ds_mod.FASHION_MNIST_STD[0], abs=1e-4)


@needs_fmnist
def test_real_fashion_mnist_subset_deterministic(fmnist, monkeypatch):
    calls = []

    def cached(root=None):
        calls.append(root)
        return fmnist

    monkeypatch.setattr(ds_mod, "load_fashion_mnist", cached)
    spec = bd.DataSpec("fashion-mnist", subset=500)
    train, test, info = bd.load_datasets(spec)
    train2, test2, _ = bd.load_datasets(spec)
    assert calls == [None, None]  # root None: load_fashion_mnist's default, the Debian folder
    assert (len(train), len(test)) == (500, 100)
    assert torch.bincount(train.labels).tolist() == [50] * 10
    assert torch.bincount(test.labels).tolist() == [10] * 10
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)
    assert not torch.equal(train.images, fmnist[0][0][:500])  # not simply the first 500
    assert info.num_classes == 10 and info.in_channels == 1 and info.image_size == (28, 28)
    assert info.class_names[0] == "T-shirt/top" and info.name == "fashion-mnist"
    assert (info.mean, info.std) == ((0.2860,), (0.3530,))
    x, y = test[3]
    expected = (test.images[3].float() / 255 - 0.2860) / 0.3530
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    torch.testing.assert_close(x, expected)

# ---------------------------------------------------------------- IDX parser


def idx_bytes(magic: int, arr: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fmnist_dir(root: Path, n_train=20, n_test=10, gz=True, labels=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lbls = np.arange(n, dtype=np.uint8) % 10 if labels is None else labels
        write(root / f"{prefix}-images-idx3-ubyte", idx_bytes(bd.fashion_mnist.IDX_IMAGES_MAGIC, imgs), gz)
        write(root / f"{prefix}-labels-idx1-ubyte", idx_bytes(bd.fashion_mnist.IDX_LABELS_MAGIC, lbls), not gz)
    return root


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write(tmp_path / "x-idx3-ubyte", idx_bytes(0x803, arr), gz)
    out = bd.read_idx(path, 0x803)
    assert out.dtype == np.uint8 and np.array_equal(out, arr) and out.flags.writeable
    labels = np.array([0, 9, 3], dtype=np.uint8)
    out = bd.read_idx(write(tmp_path / "y", idx_bytes(0x801, labels), gz), 0x801)
    assert np.array_equal(out, labels)


def test_fashion_mnist_from_data_dir(tmp_path):
    (tx, ty), (vx, vy) = bd.load_fashion_mnist(make_fmnist_dir(tmp_path, gz=True))
    assert tx.shape == (20, 1, 28, 28) and vx.shape == (10, 1, 28, 28)
    assert ty.tolist() == [i % 10 for i in range(20)] and vy.dtype == torch.int64
    train, test, info = bd.load_datasets(bd.DataSpec("fashion_mnist", root=str(tmp_path), augment=False))
    assert (len(train), len(test), info.name) == (20, 10, "fashion-mnist")
    assert torch.equal(train[0][0], train[0][0])  # no augmentation
    train, test, _ = bd.load_datasets(bd.DataSpec("fashion_mnist", root=str(tmp_path)))
    crop = train.transform.transforms[0]
    assert (crop.size, crop.padding) == ((28, 28), 2)
    draws = torch.stack([train[0][0] for _ in range(10)])
    assert draws.shape == (10, 1, 28, 28) and not bool((draws == draws[0]).all())  # augmented
    assert torch.equal(test[0][0], test[0][0])  # test split: never augmented


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[:-7], "truncated: its header says 3x28x28"),
        (lambda b: b[:10], "truncated inside its header"),
        (lambda b: b + b"\0\0", "2 bytes after"),
        (lambda b: struct.pack(">I", 0x801) + b[4:], "magic 0x00000801, expected 0x00000803"),
        (lambda b: gzip.compress(b)[:-30], "corrupt or truncated"),
        (lambda b: b"\x1f\x8bnot really gzip", "corrupt or truncated"),
    ],
    ids=["truncated", "truncated-header", "trailing", "wrong-magic", "truncated-gz", "bad-gz"],
)
def test_idx_rejects_damaged_files(tmp_path, damage, match):
    arr = np.zeros((3, 28, 28), np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(0x803, arr)))
    with pytest.raises(BatudeError, match=match) as err:
        bd.read_idx(path, 0x803)
    assert "re-download" in str(err.value) and "\n" not in str(err.value)


def test_fashion_mnist_count_mismatch(tmp_path):
    root = make_fmnist_dir(tmp_path, gz=False)
    write(root / "t10k-labels-idx1-ubyte", idx_bytes(0x801, np.zeros(9, np.uint8)), gz=True)
    with pytest.raises(BatudeError, match="has 10 images but .* has 9 labels"):
        bd.load_fashion_mnist(root)


def test_fashion_mnist_label_out_of_range(tmp_path):
    root = make_fmnist_dir(tmp_path, gz=False)
    write(root / "t10k-labels-idx1-ubyte", idx_bytes(0x801, np.full(10, 10, np.uint8)), gz=True)
    with pytest.raises(BatudeError, match="label 10, but Fashion-MNIST labels are 0..9"):
        bd.load_fashion_mnist(root)


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(BatudeError) as err:
        bd.load_datasets(bd.DataSpec("fashion-mnist", root=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert msg.startswith(f"Fashion-MNIST not found in {tmp_path / 'nowhere'}")
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


# ---------------------------------------------------------------- CIFAR-10


def cifar_batch(n: int, offset: int) -> dict:
    data = (np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) * 7 + offset) % 256
    return {b"batch_label": b"batch", b"labels": [(offset + i) % 10 for i in range(n)],
            b"data": data.astype(np.uint8), b"filenames": [b"f%d.png" % i for i in range(n)]}  # fmt: skip


def make_cifar_dir(root: Path, protocol: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(4, i), protocol=protocol))
    (root / "test_batch").write_bytes(pickle.dumps(cifar_batch(3, 0), protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads(tmp_path, protocol):
    make_cifar_dir(tmp_path / "cifar-10-batches-py", protocol)
    augmented, _, _ = bd.load_datasets(bd.DataSpec("cifar10", root=str(tmp_path)))
    assert (augmented.transform.transforms[0].size, augmented.transform.transforms[0].padding) == ((32, 32), 4)
    train, test, info = bd.load_datasets(bd.DataSpec("cifar-10", root=str(tmp_path), augment=False))
    assert (len(train), len(test)) == (20, 3)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    first = cifar_batch(4, 1)
    assert torch.equal(train.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert train.labels[:4].tolist() == first[b"labels"] and test.labels.tolist() == [0, 1, 2]
    assert info.in_channels == 3 and info.image_size == (32, 32) and info.class_names[0] == "airplane"
    x, _ = test[1]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    torch.testing.assert_close(x, (test.images[1].float() / 255 - mean) / std)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_cifar10_refuses_code_in_pickle(tmp_path):
    root = make_cifar_dir(tmp_path / "c")
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Evil(live), protocol=2))  # the payload really runs under plain pickle
    assert live.exists()
    marker = tmp_path / "marker"
    batch = cifar_batch(4, 1)
    batch[b"labels"] = _Evil(marker)
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(BatudeError, match="data_batch_1 is not a plain data pickle.*must not run code"):
        bd.load_datasets(bd.DataSpec("cifar10", root=str(root)))
    assert not marker.exists()


def test_cifar10_refuses_non_latin1_codec(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(BatudeError, match=r"_codecs.encode\(..., 'rot13'\)"):
        bd.safe_unpickle(path)


def test_cifar10_corrupt_and_missing(tmp_path):
    root = make_cifar_dir(tmp_path)
    (root / "test_batch").write_bytes((root / "test_batch").read_bytes()[:100])
    with pytest.raises(BatudeError, match="cannot unpickle .*test_batch.*re-extract"):
        bd.load_cifar10(root)
    (root / "data_batch_2").unlink()
    with pytest.raises(BatudeError, match=r"not found in .*\(missing data_batch_2\); re-extract cifar-10-python.tar.gz"):
        bd.load_cifar10(root)


def test_cifar10_wrong_shape(tmp_path):
    root = make_cifar_dir(tmp_path)
    batch = cifar_batch(4, 1)
    batch[b"data"] = batch[b"data"][:, :100]
    (root / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(BatudeError, match="data_batch_3: 'data' is a uint8 array of shape \\(4, 100\\)"):
        bd.load_cifar10(root)


# ---------------------------------------------------------------- image folders


def save_png(path: Path, color, size=(6, 4), mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_train_test_layout(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for i in range(n):
            save_png(tmp_path / split / "class_b" / f"{i}.png", (200, 10 * i, 0))
            save_png(tmp_path / split / "class_a" / f"{i}.PNG", (0, 10 * i, 100))
    train, test, info = bd.load_datasets(bd.DataSpec("folder", root=str(tmp_path), augment=False))
    assert info.class_names == ("class_a", "class_b") and info.num_classes == 2
    assert (len(train), len(test), info.in_channels, info.image_size) == (6, 2, 3, (4, 6))
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 1]
    assert train.images[4, :, 0, 0].tolist() == [200, 10, 0]  # class_b/1.png
    assert info.mean[0] == pytest.approx(100 / 255) and info.std[0] == pytest.approx(100 / 255)


def test_image_folder_auto_split_grey(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(6):
            save_png(tmp_path / cls / f"{i:02d}.png", 40 * i, mode="L")
    train, test, info = bd.load_datasets(bd.DataSpec("folder", root=str(tmp_path)))
    assert info.in_channels == 1 and (len(train), len(test)) == (10, 2)
    assert test.labels.tolist() == [0, 1] and test.images[:, 0, 0, 0].tolist() == [160, 160]  # 04.png held out
    assert train[0][0].shape == (1, 4, 6)


def test_image_folder_sizes(tmp_path):
    save_png(tmp_path / "a" / "x.png", (1, 2, 3), size=(8, 8))
    save_png(tmp_path / "b" / "y.png", (1, 2, 3), size=(10, 6))
    with pytest.raises(BatudeError, match=r"different sizes \(8x8, 10x6\); pass image_size"):
        bd.load_image_folder(tmp_path)
    images, labels, names, mode = bd.load_image_folder(tmp_path, image_size=5)
    assert images.shape == (2, 3, 5, 5) and labels.tolist() == [0, 1] and mode == "RGB"


def test_image_folder_empty(tmp_path):
    with pytest.raises(BatudeError, match="has no class sub-folders"):
        bd.load_datasets(bd.DataSpec("folder", root=str(tmp_path)))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(BatudeError, match="class folder .*a has no .png/.jpg/.jpeg images"):
        bd.load_datasets(bd.DataSpec("folder", root=str(tmp_path)))


def test_image_folder_bad_image(tmp_path):
    save_png(tmp_path / "a" / "ok.png", (1, 2, 3))
    (tmp_path / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BatudeError, match="cannot open image .*bad.jpg"):
        bd.load_image_folder(tmp_path)


# ---------------------------------------------------------------- transforms


def images(n=8, c=3, h=12, w=10) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.1


def test_random_crop_is_a_window_of_the_padded_image():
    x = images(1)[0]
    crop = bd.RandomCrop((12, 10), padding=3, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    seen = set()
    for _ in range(20):
        y = crop(x)
        assert y.shape == x.shape
        hits = [(t, l) for t in range(7) for l in range(7) if torch.equal(y, padded[:, t : t + 12, l : l + 10])]
        assert hits
        seen.add(hits[0])
    assert len(seen) > 5  # offsets vary
    assert torch.equal(bd.RandomCrop((12, 10))(x), x)  # no padding, same size: identity


def test_random_crop_reflect_has_no_zeros():
    x = images(1)[0]
    y = bd.RandomCrop((12, 10), 4, "reflect", torch.Generator().manual_seed(3))(x)
    assert y.shape == x.shape and bool((y > 0).all())
    with pytest.raises(BatudeError, match="padding_mode"):
        bd.RandomCrop(8, 1, "wrap")


def test_flip():
    x = images(1)[0]
    assert torch.equal(bd.RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(bd.RandomHorizontalFlip(0.0)(x), x)
    assert not torch.equal(x.flip(-1), x)


def augment_batch(seed: int | None) -> torch.Tensor:
    g = None if seed is None else torch.Generator().manual_seed(seed)
    t = bd.Compose([bd.RandomCrop((12, 10), 2, generator=g), bd.RandomHorizontalFlip(0.5, generator=g)])
    return torch.stack([t(x) for x in images(16)])


def test_augmentation_seeding():
    assert torch.equal(augment_batch(5), augment_batch(5))
    assert not torch.equal(augment_batch(5), augment_batch(6))
    torch.manual_seed(7)  # generator=None: torch's global RNG
    a = augment_batch(None)
    torch.manual_seed(7)
    assert torch.equal(a, augment_batch(None))
    assert not torch.equal(a, augment_batch(None))


def test_normalize():
    x = images(1, c=2)[0]
    y = bd.Normalize((0.5, 0.25), (0.2, 0.5))(x)
    torch.testing.assert_close(y[0], (x[0] - 0.5) / 0.2)
    torch.testing.assert_close(y[1], (x[1] - 0.25) / 0.5)
    with pytest.raises(BatudeError, match="2 channel.*has 3"):
        bd.Normalize((0.5, 0.25), (0.2, 0.5))(images(1)[0])
    with pytest.raises(BatudeError, match="positive"):
        bd.Normalize((0.5,), (0.0,))


def test_channel_stats():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 2, 3, 3).contiguous()
    x[:, 1] = 51
    mean, std = bd.channel_stats(x, chunk=1)
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 0.0), abs=1e-6)


# ---------------------------------------------------------------- dataset, subset, loader


def indexed_dataset(n=50) -> bd.TensorImageDataset:
    return bd.TensorImageDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))


def epoch_order(loader, epoch) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_loader_determinism():
    ds = indexed_dataset()
    a = bd.make_loader(ds, 8, train=True, seed=1)
    b = bd.make_loader(ds, 8, train=True, seed=1)
    assert epoch_order(a, 3) == epoch_order(b, 3)
    assert epoch_order(a, 3) != epoch_order(a, 4)
    assert epoch_order(a, 0) != epoch_order(bd.make_loader(ds, 8, train=True, seed=2), 0)
    assert len(epoch_order(a, 0)) == 48 and len(set(epoch_order(a, 0))) == 48  # drops the partial batch
    assert epoch_order(bd.make_loader(ds, 8, train=False, seed=1), 5) == list(range(50))


def test_loader_batches_and_validation():
    x, y = next(iter(bd.make_loader(indexed_dataset(), 4, train=False, seed=0)))
    assert x.shape == (4, 1, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(list(bd.make_loader(indexed_dataset(3), 8, train=True, seed=0))) == 1  # small set: no drop
    with pytest.raises(BatudeError, match="batch_size"):
        bd.make_loader(indexed_dataset(), 0, train=True, seed=0)
    with pytest.raises(BatudeError, match="seed"):
        bd.make_loader(indexed_dataset(), 4, train=True, seed=-1)


def test_tensor_dataset_validation():
    with pytest.raises(BatudeError, match="uint8"):
        bd.TensorImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(BatudeError, match=r"shape \(2,\)"):
        bd.TensorImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_stratified_subset():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    idx = bd.stratified_subset(labels, 15)
    assert torch.bincount(labels[idx]).tolist() == [5, 5, 5]
    assert torch.equal(idx, bd.stratified_subset(labels, 15)) and bool((idx[1:] > idx[:-1]).all())
    assert not torch.equal(idx, bd.stratified_subset(labels, 15, seed=1))
    assert torch.bincount(labels[bd.stratified_subset(labels, 30)]).tolist() == [13, 12, 5]  # class 2 runs out
    assert torch.equal(bd.stratified_subset(labels, 100), torch.arange(85))


# ---------------------------------------------------------------- spec, info, layering


def test_data_spec_validation_and_round_trip():
    spec = bd.DataSpec("CIFAR-10", root=Path("/x"), subset=100)
    assert spec.name == "cifar10" and spec.name is bd.DatasetName.CIFAR10 and spec.root == "/x"
    assert bd.DataSpec.from_dict(spec.to_dict()) == spec
    for kwargs, match in [
        (dict(name="mnist"), "unknown dataset 'mnist'; choose one of"),
        (dict(name="cifar10"), "no default location; pass its folder with --data-dir"),
        (dict(name="fashion-mnist", subset=0), "subset must be a positive integer"),
        (dict(name="fashion-mnist", image_size=32), "28x28; image_size=32 applies only to folder"),
    ]:
        with pytest.raises(BatudeError, match=match):
            bd.DataSpec(**kwargs)


def test_dataset_info_round_trip():
    info = bd.DatasetInfo(2, 3, (4, 6), (0.1, 0.2, 0.3), (1.0, 1.0, 1.0), ("a", "b"), "folder")
    assert bd.DatasetInfo.from_dict(info.to_dict()) == info


def test_data_modules_import_only_torch_numpy_stdlib():
    allowed = {"torch", "numpy", "batude", "__future__"} | set(sys.stdlib_module_names)
    for path in Path(bd.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; lazy imports inside functions are fine
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name} at module level"
                if name.startswith("batude."):
                    assert name.split(".")[1] in ("data", "errors"), f"{path.name} imports {name}"
