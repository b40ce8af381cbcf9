"""Tests for gankd.data: the real vendored MNIST, generated CIFAR-10/CelebA/folders in their exact
on-disk formats, every bad input, and a fuzz test that only GankdError ever escapes."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import gankd.data as data
from gankd.data import DEFAULT_MNIST_DIR, ImageData, load_dataset, to_uint8, to_unit_range
from gankd.errors import GankdError

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
BILINEAR = Image.Resampling.BILINEAR


@pytest.fixture(autouse=True, scope="module")
def _isolated_cache(tmp_path_factory):
    """Never write decoded datasets into the real ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANKD_CACHE", str(tmp_path_factory.mktemp("gankd-cache")))
        yield


def check_valid(d: ImageData, size: int | None = None) -> None:
    assert isinstance(d, ImageData)
    assert d.images.dtype == torch.uint8 and d.images.ndim == 4 and d.images.is_contiguous()
    assert d.images.device.type == "cpu"
    n, c, h, w = d.images.shape
    assert n == len(d) > 0 and c == d.channels in (1, 3) and h == w == d.image_size
    if size is not None:
        assert h == size
    if d.labels is not None:
        assert d.labels.dtype == np.int64 and d.labels.shape == (n,)


# ---------------------------------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def raw_idx(name: str) -> np.ndarray:
    """Independent reference parse of a vendored file: fixed 16/8-byte headers."""
    raw = gzip.decompress((DEFAULT_MNIST_DIR / f"{name}.gz").read_bytes())
    if "images" in name:
        return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(raw, np.uint8, offset=8)


def write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train", gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
        content = idx_bytes(array, magic)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)


@pytest.fixture(scope="module")
def mnist() -> dict[str, ImageData]:
    return {split: load_dataset("mnist", None, 32, split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def small_mnist() -> tuple[np.ndarray, np.ndarray]:
    return raw_idx("train-images-idx3-ubyte")[:50].copy(), raw_idx("train-labels-idx1-ubyte")[:50].copy()


def test_mnist_vendored_files_md5():
    assert DEFAULT_MNIST_DIR == Path(data.__file__).resolve().parents[1] / "data" / "mnist"
    for name, md5 in MNIST_MD5.items():
        raw = gzip.decompress((DEFAULT_MNIST_DIR / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5, name


@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_mnist_real(mnist, split, count):
    d = mnist[split]
    check_valid(d, 32)
    assert d.images.shape == (count, 1, 32, 32) and d.name == f"mnist-{split}-32"
    assert set(np.unique(d.labels)) == set(range(10))
    prefix = "train" if split == "train" else "t10k"
    np.testing.assert_array_equal(d.labels, raw_idx(f"{prefix}-labels-idx1-ubyte"))
    x = d.images.numpy()
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], raw_idx(f"{prefix}-images-idx3-ubyte"))
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not x[:, 0, border].any()  # the 2-px padding is black


def test_mnist_64_is_bilinear_resize_of_padded_32(mnist):
    d = load_dataset("mnist", str(DEFAULT_MNIST_DIR), 64, "test")
    check_valid(d, 64)
    assert d.images.shape == (10000, 1, 64, 64) and d.name == "mnist-test-64"
    for i in (0, 1234, 9999):
        small = Image.fromarray(mnist["test"].images[i, 0].numpy())
        np.testing.assert_array_equal(d.images[i, 0].numpy(), np.asarray(small.resize((64, 64), BILINEAR)))


def test_mnist_raw_idx_identical_to_gzip(tmp_path, small_mnist, mnist):
    images, labels = small_mnist
    write_mnist(tmp_path / "raw", images, labels)
    write_mnist(tmp_path / "gz", images, labels, gz=True)
    for size in (32, 128):
        raw = load_dataset("mnist", tmp_path / "raw", size)
        gz = load_dataset("mnist", tmp_path / "gz", size)
        check_valid(raw, size)
        assert torch.equal(raw.images, gz.images) and np.array_equal(raw.labels, gz.labels)
    assert torch.equal(load_dataset("mnist", tmp_path / "raw", 32).images, mnist["train"].images[:50])


def test_mnist_prefers_raw_when_both_exist(tmp_path, small_mnist):
    images, labels = small_mnist
    write_mnist(tmp_path, images, labels)
    write_mnist(tmp_path, images[:10], labels[:10], gz=True)
    assert len(load_dataset("mnist", tmp_path, 32)) == 50


def test_mnist_three_channels_replicate(tmp_path, small_mnist):
    images, labels = small_mnist
    write_mnist(tmp_path, images, labels)
    grey = load_dataset("mnist", tmp_path, 64)
    rgb = load_dataset("mnist", tmp_path, 64, channels=3)
    check_valid(rgb, 64)
    assert rgb.channels == 3 and rgb.name == "mnist-train-64-c3"
    assert torch.equal(rgb.images, grey.images.expand(-1, 3, -1, -1))
    # the same as converting each image to RGB and resizing it (the path image files take)
    padded = Image.fromarray(np.pad(images[7], 2)).convert("RGB")
    expected = np.asarray(padded.resize((64, 64), BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(rgb.images[7].numpy(), expected)


# -------------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"  # ../shared beside the clone; else skipped
FASHION_SOURCE = "apt-get download dataset-fashion-mnist` or github.com/zalandoresearch/fashion-mnist"


def fashion_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 'garments' and labels 0..9: the reader must not care what the pixels show."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_idx_files_with_labels(tmp_path, gz):
    images, labels = fashion_like(30)
    write_mnist(tmp_path, images, labels, prefix="t10k", gz=gz)
    d = load_dataset("fashion-mnist", tmp_path, 32, "test")
    check_valid(d, 32)
    assert d.name == "fashion-mnist-test-32" and d.channels == 1
    np.testing.assert_array_equal(d.images[:, 0, 2:30, 2:30].numpy(), images)  # padded like MNIST
    np.testing.assert_array_equal(d.labels, labels)
    rgb = load_dataset("fashion-mnist", tmp_path, 64, "test", channels=3)
    assert rgb.name == "fashion-mnist-test-64-c3" and rgb.images.shape == (30, 3, 64, 64)


def test_fashion_mnist_default_root_is_gankd_data(tmp_path, monkeypatch):
    images, labels = fashion_like(12, seed=1)
    write_mnist(tmp_path / "fashion-mnist", images, labels, gz=True)
    monkeypatch.setenv("GANKD_DATA", str(tmp_path))
    d = load_dataset("fashion-mnist", None, 32)
    np.testing.assert_array_equal(d.labels, labels)
    monkeypatch.delenv("GANKD_DATA")
    assert data.default_root("fashion-mnist") == data.DEFAULT_DATA_DIR / "fashion-mnist"


def test_fashion_mnist_missing_files_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GANKD_DATA", str(tmp_path))
    with pytest.raises(GankdError) as err:
        load_dataset("fashion-mnist", None, 32)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "fashion-mnist") in message and "does not exist" in message
    assert FASHION_SOURCE in message
    images, labels = fashion_like(5)
    write_mnist(tmp_path / "fashion-mnist", images, labels)  # the train split only
    with pytest.raises(GankdError, match="missing Fashion-MNIST file t10k-images-idx3-ubyte") as err:
        load_dataset("fashion-mnist", None, 32, "test")
    assert FASHION_SOURCE in str(err.value)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"no Fashion-MNIST copy at {FASHION_MNIST}")
@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real(split, count):
    d = load_dataset("fashion-mnist", FASHION_MNIST, 32, split)
    check_valid(d, 32)
    assert d.images.shape == (count, 1, 32, 32)
    assert np.bincount(d.labels).tolist() == [count // 10] * 10  # 10 classes, exactly balanced
    x = d.images.numpy()
    assert not x[:, 0, :2].any() and not x[:, 0, 30:].any()  # the padding is black
    assert x[:, 0, 2:30, 2:30].mean() > 50  # garments are bright on black, far more ink than digits (~33)


# ------------------------------------------------------------------------------------- CIFAR-10


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle did for the official CIFAR-10 batches: every string
    is a byte string (BINSTRING) and numpy's module is numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def dump_cifar_pickle(obj: object, path: Path, style: str = "py2") -> None:
    if style == "py3":
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def cifar_batch(data: np.ndarray, labels: list[int], label: bytes) -> dict:
    return {
        b"batch_label": label,
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
    }


def write_cifar(root: Path, style: str = "py2", n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """An official-format cifar-10-batches-py folder; returns what it holds."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        n = n_train if split == "train" else n_test
        datas, labels = [], []
        for i, name in enumerate(names):
            batch_data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            batch_labels = rng.integers(0, 10, n).tolist()
            label = f"training batch {i + 1} of 5" if split == "train" else "testing batch 1 of 1"
            dump_cifar_pickle(cifar_batch(batch_data, batch_labels, label.encode()), folder / name, style)
            datas.append(batch_data)
            labels += batch_labels
        out[split] = (np.concatenate(datas), np.array(labels))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": n_train, b"label_names": names, b"num_vis": 3072}
    dump_cifar_pickle(meta, folder / "batches.meta", style)
    return out


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_official_format(tmp_path, style):
    written = write_cifar(tmp_path, style)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        for split, n in (("train", 100), ("test", 10)):
            d = load_dataset("cifar10", root, 32, split)
            check_valid(d, 32)
            assert d.images.shape == (n, 3, 32, 32) and d.name == f"cifar10-{split}-32"
            rows, labels = written[split]
            np.testing.assert_array_equal(d.labels, labels)
            x = d.images.numpy()
            for plane in range(3):  # each row holds the R, G and B planes, 1024 bytes each, row-major
                np.testing.assert_array_equal(x[:, plane].reshape(n, 1024), rows[:, 1024 * plane : 1024 * (plane + 1)])


def test_cifar10_resize_and_grey(tmp_path):
    rows, _ = write_cifar(tmp_path)["test"]
    rgb = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    big = load_dataset("cifar10", tmp_path, 64, "test")
    check_valid(big, 64)
    grey = load_dataset("cifar10", tmp_path, 32, "test", channels=1)
    check_valid(grey, 32)
    assert grey.name == "cifar10-test-32-c1"
    for i in range(len(rgb)):
        image = Image.fromarray(rgb[i])
        expected = np.asarray(image.resize((64, 64), BILINEAR)).transpose(2, 0, 1)
        np.testing.assert_array_equal(big.images[i].numpy(), expected)
        np.testing.assert_array_equal(grey.images[i, 0].numpy(), np.asarray(image.convert("L")))


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: (os.system, (f"touch {marker}",)),
        lambda marker: (eval, (f"open({str(marker)!r}, 'w').close()",)),
    ],
    ids=["os.system", "builtins.eval"],
)
def test_cifar10_refuses_malicious_pickle(tmp_path, payload):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return payload(marker)

    evil = pickle.dumps(cifar_batch(Evil(), [0], b"evil"), protocol=2)
    pickle.loads(evil)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(GankdError, match="refusing to unpickle") as err:
        load_dataset("cifar10", tmp_path, 32, "test")
    assert str(folder / "test_batch") in str(err.value)
    assert not marker.exists()


def test_cifar10_refuses_other_codecs(tmp_path):
    class OddBytes:
        def __reduce__(self):
            return (codecs.encode, ("x" * 3072, "rot13"))

    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(OddBytes(), [0], b"x"), protocol=2))
    with pytest.raises(GankdError, match="test_batch"):
        load_dataset("cifar10", tmp_path, 32, "test")


def batch_pickle(data: np.ndarray, labels: list) -> bytes:
    return pickle.dumps(cifar_batch(data, labels, b"x"), protocol=2)


@pytest.mark.parametrize(
    "content,message",
    [
        (lambda good: good[: len(good) // 2], "corrupt CIFAR-10 batch"),
        (lambda good: b"not a pickle at all", "corrupt CIFAR-10 batch"),
        (lambda good: b"", "corrupt CIFAR-10 batch"),
        (lambda good: pickle.dumps([1, 2, 3], protocol=2), "expected a dict"),
        (lambda good: batch_pickle(np.zeros((2, 3072), np.float32), [0, 1]), "uint8"),
        (lambda good: batch_pickle(np.zeros((2, 1024), np.uint8), [0, 1]), "3072"),
        (lambda good: batch_pickle(np.zeros((0, 3072), np.uint8), []), "no images"),
        (lambda good: batch_pickle(np.zeros((2, 3072), np.uint8), [0]), "labels"),
        (lambda good: batch_pickle(np.zeros((2, 3072), np.uint8), [0, 10]), "labels"),
        (lambda good: batch_pickle(np.zeros((2, 3072), np.uint8), [b"a", b"b"]), "labels"),
    ],
    ids=[
        "truncated", "garbage", "empty", "not-dict", "float-data", "wrong-width",
        "no-images", "label-count", "label-range", "label-type",
    ],
)
def test_cifar10_corrupt_batch(tmp_path, content, message):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(GankdError, match=message) as err:
        load_dataset("cifar10", tmp_path, 32)
    assert str(path) in str(err.value)


def test_cifar10_missing_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(GankdError, match="missing CIFAR-10 file data_batch_4"):
        load_dataset("cifar10", tmp_path, 32)
    assert len(load_dataset("cifar10", tmp_path, 32, "test")) == 10


# --------------------------------------------------------------------------- CelebA and folders


def write_celeba(root: Path, n: int = 6, partition: bool = True) -> list[str]:
    """img_align_celeba/ of 178x218 JPEGs; image 0 is red in its top and bottom 20 rows, blue in
    the 178x178 centre the crop keeps."""
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        if i == 0:
            pixels[:] = (0, 0, 255)
            pixels[:20] = pixels[-20:] = (255, 0, 0)
        Image.fromarray(pixels).save(folder / name, quality=95)
    if partition:
        codes = [0, 0, 0, 1, 2, 2][:n]
        (root / "list_eval_partition.txt").write_text("".join(f"{nm} {c}\n" for nm, c in zip(names, codes)))
    return names


def test_celeba_partition_and_crop(tmp_path):
    write_celeba(tmp_path)
    for root in (tmp_path, tmp_path / "img_align_celeba"):
        for split, n in (("train", 3), ("valid", 1), ("test", 2), ("all", 6)):
            d = load_dataset("celeba", root, 64, split)
            check_valid(d, 64)
            assert d.images.shape == (n, 3, 64, 64) and d.labels is None
            assert d.name.startswith(f"celeba-{split}-64-")
    train = load_dataset("celeba", tmp_path, 64, "train")
    r, g, b = train.images[0].to(torch.float32).mean(dim=(1, 2)).tolist()
    assert b > 240 and r < 15 and g < 15  # the red rows were cropped away
    valid = load_dataset("celeba", tmp_path, 32, "valid", channels=1)
    assert valid.images.shape == (1, 1, 32, 32) and valid.name.endswith("-c1")


def test_celeba_without_partition(tmp_path):
    write_celeba(tmp_path, partition=False)
    d = load_dataset("celeba", tmp_path, 32)
    assert len(d) == 6 and d.name.startswith("celeba-all-32-")  # "train" is every image: say so
    with pytest.raises(GankdError, match="list_eval_partition.txt"):
        load_dataset("celeba", tmp_path, 32, "valid")


def test_celeba_bad_partition(tmp_path):
    write_celeba(tmp_path)
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000099.jpg 0\n")
    with pytest.raises(GankdError, match="000099.jpg is listed in"):
        load_dataset("celeba", tmp_path, 32)
    partition.write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(GankdError, match="line 2"):
        load_dataset("celeba", tmp_path, 32)
    partition.write_text("000001.jpg 0\n")
    with pytest.raises(GankdError, match="no images for split 'test'"):
        load_dataset("celeba", tmp_path, 32, "test")


def write_mixed_folder(root: Path) -> dict[str, np.ndarray]:
    """Images of many sizes, modes and formats, some nested; returns the expected grey level of
    the solid-grey ones by relative path."""
    (root / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(root / "grey_L.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "rgb.JPG")
    Image.fromarray(rng.integers(0, 256, (50, 20, 4), dtype=np.uint8)).save(root / "nested" / "rgba.png")
    palette = Image.fromarray(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)).quantize(16)
    palette.save(root / "nested" / "palette.png", transparency=0)
    Image.fromarray(np.full((16, 24), 40000, np.uint16)).save(root / "nested" / "deeper" / "sixteen.png")
    Image.new("CMYK", (70, 40), (0, 255, 255, 0)).save(root / "cmyk.jpeg")
    Image.new("1", (9, 13), 1).save(root / "bilevel.bmp")
    Image.new("LA", (12, 12), (77, 128)).save(root / "la.png")
    Image.new("RGB", (150, 90), (10, 200, 30)).save(root / "solid.webp", lossless=True)
    (root / "README.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return {"nested/deeper/sixteen.png": round(40000 * 255 / 65535), "bilevel.bmp": 255, "la.png": 77}


@pytest.mark.parametrize("size", [32, 128])
def test_folder_mixed_modes_and_sizes(tmp_path, size):
    expected_grey = write_mixed_folder(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*") if p.suffix.lower() != ".txt")
    names.remove(".hidden.png")
    rgb = load_dataset("folder", tmp_path, size)
    grey = load_dataset("folder", tmp_path, size, channels=1)
    check_valid(rgb, size)
    check_valid(grey, size)
    assert rgb.images.shape == (len(names), 3, size, size) and grey.images.shape == (len(names), 1, size, size)
    assert rgb.labels is None and rgb.name.startswith(f"folder-train-{size}-") and grey.name.endswith("-c1")
    for name, level in expected_grey.items():  # solid images stay solid; 16-bit is scaled, not clipped
        i = names.index(name)
        assert (rgb.images[i].int() - level).abs().max() <= 1, name
    solid = rgb.images[names.index("solid.webp")].to(torch.float32).mean(dim=(1, 2))
    assert torch.allclose(solid, torch.tensor([10.0, 200.0, 30.0]), atol=1)
    cmyk = rgb.images[names.index("cmyk.jpeg")].to(torch.float32).mean(dim=(1, 2))
    assert cmyk[0] > 200 and cmyk[1] < 50 and cmyk[2] < 50  # C=0, M=Y=full is red
    i = names.index("grey_L.png")
    assert torch.equal(rgb.images[i], grey.images[i].expand(3, -1, -1))


def test_folder_centre_crop_is_exact(tmp_path):
    pixels = np.zeros((48, 32, 3), np.uint8)
    pixels[:8] = pixels[-8:] = 255
    pixels[8:40] = np.random.default_rng(2).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    Image.fromarray(pixels.transpose(1, 0, 2)).save(tmp_path / "wide.png")
    d = load_dataset("folder", tmp_path, 32)
    np.testing.assert_array_equal(d.images[0].numpy(), pixels[8:40].transpose(2, 0, 1))
    np.testing.assert_array_equal(d.images[1].numpy(), pixels[8:40].transpose(2, 1, 0))  # the wide one, transposed


def test_folder_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GANKD_CACHE", str(cache))
    images = tmp_path / "images"
    write_mixed_folder(images)
    first = load_dataset("folder", images, 32)
    files = list((cache / "datasets").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # and no temporary file left behind

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(data, "_decode", no_decoding)
        second = load_dataset("folder", images, 32)
    assert torch.equal(first.images, second.images) and first.name == second.name

    Image.new("RGB", (64, 64), (1, 2, 3)).save(images / "rgb.JPG")  # a changed file is decoded again
    third = load_dataset("folder", images, 32)
    assert not torch.equal(first.images, third.images)
    changed = third.images[7]  # rgb.JPG, in sorted order
    assert (changed.int() - torch.tensor([1, 2, 3]).view(3, 1, 1)).abs().max() <= 2

    for cached in (cache / "datasets").iterdir():  # a damaged cache file is rebuilt, not trusted
        cached.write_bytes(cached.read_bytes()[:200])
    assert torch.equal(load_dataset("folder", images, 32).images, third.images)


def test_folder_cache_unwritable_warns(tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("GANKD_CACHE", str(tmp_path / "not-a-dir"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="could not cache"):
        assert len(load_dataset("folder", tmp_path, 32)) == 1


# ------------------------------------------------------------------------------------ conversions


def test_unit_range_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = to_unit_range(x)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    assert torch.allclose(y, x.float() / 127.5 - 1)
    assert torch.equal(to_uint8(y), x)
    clamped = to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]))
    assert torch.equal(clamped, torch.tensor([0, 0, 128, 255, 255], dtype=torch.uint8))


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist", "cifar10", "celeba", "folder"])
def test_missing_root(tmp_path, kind):
    with pytest.raises(GankdError, match="does not exist") as err:
        load_dataset(kind, tmp_path / "nowhere", 32)
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(GankdError, match="is a file"):
        load_dataset(kind, tmp_path / "file", 32)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("mnist", "missing MNIST file train-images-idx3-ubyte"),
        ("fashion-mnist", "missing Fashion-MNIST file train-images-idx3-ubyte"),
        ("cifar10", "missing CIFAR-10 file data_batch_1"),
        ("celeba", "no images found"),
        ("folder", "no images found"),
    ],
)
def test_empty_root(tmp_path, kind, message):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(GankdError, match=message) as err:
        load_dataset(kind, tmp_path, 32)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="imagenet", root=None, image_size=32), "unknown dataset 'imagenet'"),
        (dict(kind="mnist", root=None, image_size=48), "image size must be one of"),
        (dict(kind="mnist", root=None, image_size=32, split="valid"), "unknown split 'valid' for mnist"),
        (dict(kind="folder", root=None, image_size=32, split="test"), "unknown split 'test' for folder"),
        (dict(kind="mnist", root=None, image_size=32, channels=2), "channels must be 1 or 3"),
        (dict(kind="cifar10", root=None, image_size=32), "needs a data folder"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(GankdError, match=message):
        load_dataset(**kwargs)


def test_mnist_truncated_gzip(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((DEFAULT_MNIST_DIR / name).read_bytes())
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GankdError, match="corrupt or truncated gzip") as err:
        load_dataset("mnist", tmp_path, 32, "test")
    assert str(path) in str(err.value)


def gzip_bomb(path: Path, header: bytes, zeros: int) -> None:
    """A valid IDX header followed by ``zeros`` zero bytes, gzip-compressed (about 1000:1)."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as f:
        f.write(header)
        block = bytes(1 << 22)
        for _ in range(zeros // len(block)):
            f.write(block)


@pytest.mark.parametrize("claimed", [50, 100_000])
def test_mnist_gzip_bomb_is_refused_after_the_header_size(tmp_path, small_mnist, monkeypatch, claimed):
    """256 MiB of zeros behind a header declaring 50 (or 100,000) images: refused as soon as the
    stream passes the declared size, having decompressed no more than that plus one chunk, and
    before any array of the declared size is allocated."""
    write_mnist(tmp_path, *small_mnist)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    (tmp_path / "train-images-idx3-ubyte").unlink()
    gzip_bomb(bomb, struct.pack(">4I", 2051, claimed, 28, 28), 256 << 20)
    decompressed = []
    real_read = gzip.GzipFile.read

    def counting_read(self, size=-1):
        chunk = real_read(self, size)
        decompressed.append(len(chunk))
        return chunk

    allocated, real_empty = [], np.empty
    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    monkeypatch.setattr(data.np, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    with pytest.raises(GankdError, match=rf"{bomb}: header says {claimed}x28x28 = {claimed * 784} bytes of data, the file holds more"):
        load_dataset("mnist", tmp_path, 32)
    assert sum(decompressed) <= 16 + claimed * 784 + data._READ_CHUNK and not allocated


def test_mnist_header_over_the_limit_is_refused(tmp_path, small_mnist, monkeypatch):
    images, labels = small_mnist
    write_mnist(tmp_path, images, labels, gz=True)
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 49 * 784)
    with pytest.raises(GankdError, match=r"header says 50x28x28 = 39,200 bytes of data, over gankd's limit of 38,416"):
        load_dataset("mnist", tmp_path, 32)


def test_mnist_missing_labels_file(tmp_path, small_mnist):
    write_mnist(tmp_path, *small_mnist)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(GankdError, match=r"missing MNIST file train-labels-idx1-ubyte \(or .*ubyte.gz\)"):
        load_dataset("mnist", tmp_path, 32)


@pytest.mark.parametrize(
    "images_file,labels_file,message",
    [
        (lambda im: idx_bytes(im, 2049), None, "wrong IDX magic number 2049, expected 2051"),
        (None, lambda lb: idx_bytes(lb, 2051), "wrong IDX magic number 2051, expected 2049"),
        (None, lambda lb: idx_bytes(lb[:-1], 2049), "50 images but .* has 49 labels"),
        (lambda im: idx_bytes(im, 2051)[:-5], None, "header says 50x28x28 = 39200 bytes of data, the file holds 39195"),
        (lambda im: idx_bytes(im, 2051) + b"\0", None, "header says 50x28x28 = 39200 bytes .* holds 39201"),
        (lambda im: idx_bytes(im, 2051)[:10], None, "too short for an IDX header"),
        (lambda im: idx_bytes(im.reshape(50, 14, 56), 2051), None, "expected 28x28 (Fashion-)?MNIST images, found 14x56"),
        (lambda im: idx_bytes(im[:0], 2051), None, "contains no images"),
        (None, lambda lb: idx_bytes(lb + 10, 2049), "labels must be 0..9"),
    ],
    ids=[
        "images-magic", "labels-magic", "count-mismatch", "short-data", "long-data",
        "short-header", "not-28x28", "empty", "label-range",
    ],
)
@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist"])
def test_mnist_bad_idx(tmp_path, small_mnist, images_file, labels_file, message, kind):
    images, labels = small_mnist
    write_mnist(tmp_path, images, labels)
    if images_file:
        (tmp_path / "train-images-idx3-ubyte").write_bytes(images_file(images))
    if labels_file:
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels_file(labels))
    with pytest.raises(GankdError, match=message) as err:
        load_dataset(kind, tmp_path, 32)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_folder_corrupt_image(tmp_path, content):
    Image.new("RGB", (8, 8)).save(tmp_path / "a_good.png")
    (tmp_path / "b_bad.png").write_bytes(content)
    with pytest.raises(GankdError, match="cannot read image") as err:
        load_dataset("folder", tmp_path, 32)
    assert str(tmp_path / "b_bad.png") in str(err.value)


@pytest.mark.parametrize("gankd_limit, pillow_limit, message", [
    (300, 10_000, r"20x20 pixels, over gankd's limit of 300 per image"),  # gankd's check, from the header
    (300, 350, r"20x20 pixels, over gankd's limit of 300 per image"),  # Pillow would warn first
    (1000, 150, r"over gankd's limit of 1,000 pixels per image"),  # Pillow refuses first (over twice its limit)
])
def test_folder_image_over_the_pixel_limit(tmp_path, monkeypatch, recwarn, gankd_limit, pillow_limit, message):
    """One line in gankd's words, and no Pillow warning printed before it."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a_small.png")
    Image.new("L", (20, 20)).save(tmp_path / "b_big.png")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", gankd_limit)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with pytest.raises(GankdError, match=message) as err:
        load_dataset("folder", tmp_path, 32)
    assert str(tmp_path / "b_big.png") in str(err.value)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_folder_of_greyscale_images_defaults_to_one_channel(tmp_path, capsys):
    grey, colour = tmp_path / "grey", tmp_path / "colour"
    pixels = np.random.default_rng(8).integers(0, 256, (5, 40, 48), dtype=np.uint8)
    for i, image in enumerate(pixels):
        (grey / "sub").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(grey / "sub" / f"{i}.png")
    Image.new("1", (30, 30), 1).save(grey / "bilevel.bmp")
    Image.new("LA", (30, 30), (90, 200)).save(grey / "alpha.png")
    auto = load_dataset("folder", grey, 32)
    said = capsys.readouterr().err
    assert f"note: {grey}: every image is greyscale: 1 channel" in said and "error" not in said  # news, not a failure
    explicit = load_dataset("folder", grey, 32, channels=1)
    check_valid(auto, 32)
    assert auto.channels == 1 and torch.equal(auto.images, explicit.images) and auto.name == explicit.name
    assert torch.equal(load_dataset("folder", grey, 32).images, auto.images)  # the cached result
    assert "1 channel" in capsys.readouterr().err  # said again on a cache hit
    assert load_dataset("folder", grey, 32, channels=3).channels == 3  # asked for: converted
    shutil.copytree(grey, colour)
    Image.new("RGB", (30, 30), (200, 10, 10)).save(colour / "red.png")
    mixed = load_dataset("folder", colour, 32)
    assert mixed.channels == 3 and "colour images: 3 channels" in capsys.readouterr().err
    assert torch.equal(mixed.images, load_dataset("folder", colour, 32, channels=3).images)


def test_folder_truncated_image(tmp_path):
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    path = tmp_path / "x.jpg"
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(GankdError, match="x.jpg"):
        load_dataset("folder", tmp_path, 32)


# ----------------------------------------------------------------------------------------- fuzz


def mutated(seed: bytes, hot: int) -> st.SearchStrategy[bytes]:
    """Random bytes, or ``seed`` with a few bytes set, inserted or cut, mostly in its first ``hot``
    bytes (the headers, where parsers decide things)."""
    position = st.one_of(st.integers(0, min(hot, len(seed))), st.integers(0, len(seed)))
    edit = st.tuples(st.sampled_from(["set", "insert", "cut"]), position, st.integers(0, 255))

    def apply(edits):
        out = bytearray(seed)
        for op, at, value in edits:
            at = min(at, len(out))
            if op == "set" and at < len(out):
                out[at] = value
            elif op == "insert":
                out[at:at] = bytes([value]) * (1 + value % 4)
            elif op == "cut":
                del out[at:]
        return bytes(out)

    return st.one_of(st.binary(max_size=300), st.lists(edit, min_size=1, max_size=6).map(apply))


def load_or_gankd_error(*args, **kwargs) -> None:
    try:
        d = load_dataset(*args, **kwargs)
    except GankdError:
        return
    check_valid(d)


FUZZ_IMAGES = np.random.default_rng(4).integers(0, 256, (3, 28, 28), dtype=np.uint8)
FUZZ_LABELS = np.array([1, 2, 3], np.uint8)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["images", "labels"]),
    st.sampled_from(["raw", "gzip-then-mutate", "mutate-then-gzip"]),
    st.data(),
)
def test_fuzz_mnist(target, container, draw):
    seed = idx_bytes(FUZZ_IMAGES if target == "images" else FUZZ_LABELS, 2051 if target == "images" else 2049)
    if container == "gzip-then-mutate":
        content = draw.draw(mutated(gzip.compress(seed), 40))
    else:
        content = draw.draw(mutated(seed, 20))
        content = gzip.compress(content) if container == "mutate-then-gzip" else content
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_mnist(root, FUZZ_IMAGES, FUZZ_LABELS)
        suffix = "images-idx3-ubyte" if target == "images" else "labels-idx1-ubyte"
        (root / f"train-{suffix}").unlink()
        (root / f"train-{suffix}{'' if container == 'raw' else '.gz'}").write_bytes(content)
        load_or_gankd_error("mnist", root, draw.draw(st.sampled_from([32, 64])))


FUZZ_BATCH = cifar_batch(np.random.default_rng(5).integers(0, 256, (1, 3072), np.uint8), [7], b"testing batch 1 of 1")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["py2", "py3"]), st.data())
def test_fuzz_cifar10(style, draw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_batch"
        dump_cifar_pickle(FUZZ_BATCH, path, style)
        path.write_bytes(draw.draw(mutated(path.read_bytes(), 400)))
        load_or_gankd_error("cifar10", tmp, 32, "test")


def image_seed(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (6, 10, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


FUZZ_SEEDS = {ext: image_seed(ext[1:].replace("jpg", "jpeg").upper()) for ext in (".png", ".jpg", ".bmp", ".webp")}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(FUZZ_SEEDS)), st.data())
def test_fuzz_image_folder(ext, draw):
    content = draw.draw(mutated(FUZZ_SEEDS[ext], 120))
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "MAX_IMAGE_PIXELS", 1 << 20)  # keep mutated headers from allocating gigabytes
        (Path(tmp) / f"image{ext}").write_bytes(content)
        load_or_gankd_error("folder", tmp, 32)
