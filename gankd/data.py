"""Dataset readers: MNIST, Fashion-MNIST, CIFAR-10, CelebA and any folder of images, held in memory as uint8.

``load_dataset`` reads a whole split once and returns it as an (N, C, S, S) uint8 tensor at the
requested image size S; training converts batches to [-1, 1] with ``to_unit_range``. Only numpy
and Pillow are used (no torchvision). Decoding a folder of JPEGs is slow, so the decoded array is
cached as a .npy file under ``$GANKD_CACHE/datasets`` (default ``~/.cache/gankd/datasets``).

Every problem with the files themselves raises ``GankdError`` naming the file, never a raw
gzip/pickle/Pillow exception. Reading is bounded: a gzip stream is refused as soon as it
decompresses past the size its IDX header declares (so a gzip bomb costs no memory), and an
image over ``MAX_IMAGE_PIXELS`` is refused from its header, before it is decoded.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageMode

from gankd.config import DEFAULT_IMAGE_SIZE, IMAGE_SIZES
from gankd.errors import GankdError
from gankd.progress import note, progress

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

DATASETS = ("mnist", "fashion-mnist", "cifar10", "celeba", "folder")
SPLITS = {
    "mnist": ("train", "test"),
    "fashion-mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "celeba": ("train", "valid", "test", "all"),  # list_eval_partition.txt codes 0, 1, 2
    "folder": ("train",),  # a plain folder has no splits: "train" is all of it
}
NATIVE_CHANNELS = {"mnist": 1, "fashion-mnist": 1, "cifar10": 3, "celeba": 3, "folder": 3}  # a folder's default is its images' (load_dataset)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"
DEFAULT_DATA_DIR = DEFAULT_MNIST_DIR.parent  # $GANKD_DATA when unset: the repository's data/ folder
# The IDX datasets share one format, file names and reader: name -> (title, where to get the files).
IDX_DATASETS = {
    "mnist": ("MNIST", None),  # vendored
    "fashion-mnist": ("Fashion-MNIST", "`apt-get download dataset-fashion-mnist` or github.com/zalandoresearch/fashion-mnist (data/fashion)"),
}

_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # IDX magic: 0x08 (unsigned byte) << 8 | number of dims
_CACHE_FORMAT = 1  # bump when decoding changes, so stale cache files are never reused

# Input limits: larger inputs are refused with one line before they are read into memory.
MAX_IDX_BYTES = 2**30  # data of one IDX file; MNIST's training images are 47 MB
MAX_IMAGE_PIXELS = 2**26  # width x height of one image file (e.g. 8192 x 8192); Pillow's own limit is 89 M
_READ_CHUNK = 2**20


@dataclass
class ImageData:
    """A whole dataset split in memory; ``name`` identifies it in caches of reference statistics."""

    images: torch.Tensor  # uint8 (N, C, S, S), CPU, contiguous
    labels: np.ndarray | None  # int64 (N,) for MNIST and CIFAR-10, else None
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def natural_image_size(kind: str, root: str | Path | None) -> int:
    """The image size a run on this data trains at unless told: the largest supported size at or
    below the images' shorter side (every image's, for a folder; the first's for CelebA, whose
    aligned images share one size), and DEFAULT_IMAGE_SIZE for the 28- and 32-pixel sets. A
    folder's or CelebA's choice is said in a note, as it may shrink the images."""
    if kind not in ("folder", "celeba") or root is None or not Path(root).expanduser().is_dir():
        return DEFAULT_IMAGE_SIZE  # (a missing folder is reported by load_dataset)
    root = Path(root).expanduser()
    files = _image_files(root) if kind == "folder" else _celeba_files(root, "all")[0][:1]
    if not files:
        return DEFAULT_IMAGE_SIZE
    shorter = min(min(_image_dimensions(path)) for path in files)
    size = max([s for s in IMAGE_SIZES if s <= shorter], default=IMAGE_SIZES[0])
    note(f"note: {root}: images are at least {shorter} px on their shorter side: training at {size}x{size} "
         f"({'enlarged' if size > shorter else 'the largest size that fits'}; --image-size to choose)")
    return size


def _image_dimensions(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except (OSError, Image.DecompressionBombError) as e:
        raise GankdError(f"{path}: not a readable image ({e})") from None


def load_dataset(
    kind: str,
    root: str | Path | None,
    image_size: int,
    split: str = "train",
    channels: int | None = None,
) -> ImageData:
    """Load one split of a dataset at ``image_size`` x ``image_size``.

    Geometry: MNIST's (and Fashion-MNIST's) 28x28 images are zero-padded to 32x32 (2 px of black on each side, the usual
    DCGAN practice) and CIFAR-10 is 32x32 already; either is then resized to S with Pillow's
    bilinear filter when S != 32. CelebA and folders are centre-cropped to a square of the shorter
    side (178x178 for aligned CelebA) and resized with the same filter, which Pillow antialiases
    when shrinking. ``channels`` defaults to the dataset's own: 1 for MNIST and Fashion-MNIST, 3 for
    CIFAR-10 and CelebA, and for a folder 1 when every image is greyscale (modes 1, L, LA, I, F),
    else 3 (the choice is printed on stderr). Grey is replicated to RGB, and RGB becomes grey with
    Pillow's "L" luma. ``root=None`` means the vendored MNIST (``DEFAULT_MNIST_DIR``) and
    ``$GANKD_DATA/fashion-mnist`` (``$GANKD_DATA`` defaulting to the repository's ``data/``) for
    Fashion-MNIST; other datasets need a root.

    Splits are listed in ``SPLITS``; CelebA's come from list_eval_partition.txt, and without it
    "train" is every image. The name, a cache key, is ``<kind>-<split>-<S>``, plus a digest of
    file names and sizes for CelebA and folders (so different folders never share statistics),
    plus ``-c<channels>`` when that differs from the dataset's own.
    """
    if kind not in DATASETS:
        raise GankdError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASETS)}")
    if image_size not in IMAGE_SIZES:
        raise GankdError(f"image size must be one of {IMAGE_SIZES}, got {image_size}")
    if split not in SPLITS[kind]:
        raise GankdError(f"unknown split {split!r} for {kind}; choose one of {', '.join(SPLITS[kind])}")
    native = NATIVE_CHANNELS[kind]
    channels = native if channels is None and kind != "folder" else channels
    if channels not in (1, 3, None):
        raise GankdError(f"channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser() if root is not None else default_root(kind)
    if not root.is_dir():
        source = IDX_DATASETS.get(kind, (None, None))[1]
        where = f"; get the four IDX files from {source}" if source else ""
        raise GankdError(f"{kind} data folder {root} does not exist" + (" (it is a file)" if root.exists() else where))

    labels = None
    if kind in IDX_DATASETS or kind == "cifar10":
        images, labels = _read_idx_split(root, split, kind) if kind in IDX_DATASETS else _read_cifar10(root, split)
        images = _convert_arrays(images, image_size, channels)
        name = f"{kind}-{split}-{image_size}"
    else:
        files, base, split = _celeba_files(root, split) if kind == "celeba" else (_image_files(root), root, split)
        images, digest = _load_image_files(files, base, split, image_size, channels)
        name = f"{kind}-{split}-{image_size}-{digest}"  # the digest tells apart different folders
        if channels is None:
            channels = images.shape[1]
            chose = "every image is greyscale: 1 channel (--channels 3 for RGB)" if channels == 1 else \
                "colour images: 3 channels (--channels 1 for grey)"
            note(f"note: {root}: {chose}")
    if channels != native:
        name += f"-c{channels}"
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)), labels, name)


def default_root(kind: str) -> Path:
    """Where a dataset is looked for without ``--data``: the vendored MNIST, or
    ``$GANKD_DATA/<kind>`` (``$GANKD_DATA`` defaults to the repository's ``data/``) for
    Fashion-MNIST, whose 30 MB are not vendored. Other formats have no default."""
    if kind == "mnist":
        return DEFAULT_MNIST_DIR
    if kind == "fashion-mnist":
        return Path(os.environ.get("GANKD_DATA") or DEFAULT_DATA_DIR).expanduser() / kind
    raise GankdError(f"the {kind} dataset needs a data folder (--data DIR)")


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range of the generator's tanh output."""
    return images_uint8.to(torch.float32) / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, rounded and clamped; the exact inverse of ``to_unit_range``."""
    return ((images.to(torch.float32) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------ MNIST and Fashion-MNIST


def _read_idx_split(root: Path, split: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The IDX files of one split of MNIST or Fashion-MNIST (same names, same format), padded to
    (N, 1, 32, 32), and int64 labels (digits, or Fashion-MNIST's 10 clothing classes)."""
    title = IDX_DATASETS[kind][0]
    prefix = "train" if split == "train" else "t10k"
    image_path = _find_idx(root, f"{prefix}-images-idx3-ubyte", kind)
    label_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte", kind)
    images = _read_idx(image_path, _IDX_IMAGES)
    labels = _read_idx(label_path, _IDX_LABELS)
    if images.shape[1:] != (28, 28):
        raise GankdError(f"{image_path}: expected 28x28 {title} images, found {images.shape[1]}x{images.shape[2]}")
    if len(images) == 0:
        raise GankdError(f"{image_path}: contains no images")
    if len(labels) != len(images):
        raise GankdError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    if labels.max() > 9:
        raise GankdError(f"{label_path}: {title} labels must be 0..9, found {labels.max()}")
    padded = np.zeros((len(images), 1, 32, 32), np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return padded, labels.astype(np.int64)


def _find_idx(root: Path, name: str, kind: str) -> Path:
    """The raw IDX file if present (nothing to decompress), else its .gz."""
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    title, source = IDX_DATASETS[kind]
    hint = f"; get the four IDX files from {source}" if source else ""
    raise GankdError(f"{root}: missing {title} file {name} (or {name}.gz){hint}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzip or raw): big-endian magic, one uint32 per dim, data.

    Memory is bounded by the header's declared size: a gzip stream is first decompressed without
    keeping anything and refused as soon as it runs past that size (a bomb of zeros costs a few
    MB, not its decompressed size); only then is it decompressed into an array of exactly it.
    """
    ndim = magic & 0xFF
    header_size = 4 * (1 + ndim)
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"  # gzip magic; an IDX file starts with two zero bytes instead
        with _open_idx(path, compressed) as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise GankdError(f"{path}: too short for an IDX header ({len(header)} bytes)")
            found, *dims = np.frombuffer(header, ">u4").tolist()
            if found != magic:
                raise GankdError(f"{path}: wrong IDX magic number {found}, expected {magic}")
            shape, expected = "x".join(map(str, dims)), math.prod(dims)
            if expected > MAX_IDX_BYTES:
                raise GankdError(f"{path}: header says {shape} = {expected:,} bytes of data, over gankd's limit of {MAX_IDX_BYTES:,}")
            held = _stream_length(f, expected) if compressed else path.stat().st_size - header_size
            if held != expected:
                more = f"more than {expected} (decompression stopped there)" if compressed and held > expected else str(held)
                raise GankdError(f"{path}: header says {shape} = {expected} bytes of data, the file holds {more}")
        with _open_idx(path, compressed) as f:
            f.read(header_size)
            data = np.empty(expected, np.uint8)
            view, got = memoryview(data), 0
            while got < expected and (n := f.readinto(view[got:])):
                got += n
            if got != expected:  # the file changed since it was measured
                raise GankdError(f"{path}: the file changed while it was read")
    except (OSError, EOFError, zlib.error) as e:
        if not compressed:
            raise GankdError(f"cannot read {path}: {e.strerror or e}") from e
        raise GankdError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return data.reshape(dims)


def _open_idx(path: Path, compressed: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _stream_length(f: io.BufferedIOBase, limit: int) -> int:
    """Bytes left in ``f``, read and dropped in chunks; stops at ``limit + 1``."""
    held = 0
    while held <= limit:
        chunk = f.read(min(_READ_CHUNK, limit + 1 - held))
        if not chunk:
            break
        held += len(chunk)
    return held


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GankdError(f"cannot read {path}: {e.strerror}") from e


# ------------------------------------------------------------------------------------- CIFAR-10


def _read_cifar10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The python-version batches of one split as (N, 3, 32, 32) and int64 labels."""
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for name in names:
        if not (folder / name).is_file():
            raise GankdError(f"{folder}: missing CIFAR-10 file {name} (expected the python version's batches)")
    batches = [_read_cifar_batch(folder / name) for name in names]
    images = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images.reshape(-1, 3, 32, 32), labels  # each row is the R, G and B planes, row-major


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(_read_bytes(path)), path).load()
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise GankdError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
        data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    except GankdError:
        raise
    except Exception as e:  # a corrupt pickle can fail with almost any exception type
        raise GankdError(f"{path}: corrupt CIFAR-10 batch ({type(e).__name__}: {e})") from e
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise GankdError(f"{path}: b'data' must be a uint8 array of shape (N, 3072)")
    if len(data) == 0:
        raise GankdError(f"{path}: contains no images")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise GankdError(f"{path}: b'labels' must be {len(data)} integers in 0..9")
    return data, labels.astype(np.int64)


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Python 3 pickles bytes (protocol 2) as _codecs.encode(text, 'latin1'). Any other codec is
    refused: a codec lookup imports a module by name."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _empty_bytes() -> bytes:
    """Python 3 pickles b"" (protocol 2) as a call to bytes(); allow exactly that call."""
    return b""


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Loads plain data and numpy arrays only. A pickle can call any function it names, so a
    user-supplied one must never reach ``pickle.load``: every other global is refused unresolved."""

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the official batches were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise GankdError(
                f"{self.path}: refusing to unpickle {module}.{name}; a CIFAR-10 batch holds only numpy arrays"
            ) from None


def _convert_arrays(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(N, C, 32, 32) -> (N, channels, size, size), image by image through Pillow so arrays get
    exactly the conversions image files get."""
    n, c, _, width = images.shape
    if c == channels and width == size:
        return images
    if c == 1 and channels == 3:  # replicating after resizing gives the same pixels, 3x cheaper
        return np.repeat(_convert_arrays(images, size, 1), 3, axis=1)
    hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        out[i] = _to_array(Image.fromarray(hwc[i, :, :, 0] if c == 1 else hwc[i]), size, channels)
    return out


# --------------------------------------------------------------------------- CelebA and folders


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by relative path. Hidden files and folders
    are skipped (macOS ``._*`` files and the like are not images)."""
    files = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    ]
    if not files:
        raise GankdError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def _celeba_files(root: Path, split: str) -> tuple[list[Path], Path, str]:
    """The images of one CelebA split, their folder, and the split they really are: without
    list_eval_partition.txt "train" is every image, so it is named "all"."""
    images_dir = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    partition = images_dir.parent / "list_eval_partition.txt"
    if split == "all" or not partition.is_file():
        if split not in ("train", "all"):
            raise GankdError(f"CelebA split {split!r} needs {partition}, which does not exist")
        return _image_files(images_dir), images_dir, "all"
    try:
        lines = partition.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GankdError(f"cannot read {partition}: {e}") from e
    code = str(SPLITS["celeba"].index(split))
    files = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if fields and (len(fields) != 2 or fields[1] not in ("0", "1", "2")):
            raise GankdError(f"{partition}, line {number}: expected '<image file> <0|1|2>', got {line!r}")
        if fields and fields[1] == code:
            files.append(images_dir / fields[0])
    if not files:
        raise GankdError(f"{partition} lists no images for split {split!r}")
    missing = next((path for path in files if not path.is_file()), None)
    if missing is not None:
        raise GankdError(f"{missing} is listed in {partition} but does not exist")
    return files, images_dir, split


def _load_image_files(files: list[Path], base: Path, split: str, size: int, channels: int | None) -> tuple[np.ndarray, str]:
    """Decode ``files`` to (N, channels, size, size), or reuse the cached result (``channels=None``:
    the images' own, see ``_decode_files``). Also returns a short digest of the file names and
    sizes, which identifies the dataset across machines."""
    stats = [(path.relative_to(base).as_posix(), path.stat()) for path in files]
    digest = _sha256([(name, st.st_size) for name, st in stats])[:8]
    key = _sha256(
        {
            "format": _CACHE_FORMAT,
            "folder": str(base.resolve()),
            "files": [(name, st.st_size, st.st_mtime_ns) for name, st in stats],
            "split": split,
            "size": size,
            "channels": channels,
        }
    )
    cache = _cache_dir() / f"{split}-{size}-c{channels or 'auto'}-{key[:24]}.npy"
    images = _read_cache(cache, (len(files), channels, size, size))
    if images is None:
        images = _decode_files(files, size, channels, desc=f"decoding {base}")
        _write_cache(cache, images)
    return images, digest


def _sha256(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def _cache_dir() -> Path:
    return Path(os.environ.get("GANKD_CACHE") or "~/.cache/gankd").expanduser() / "datasets"


def _read_cache(path: Path, shape: tuple[int, int | None, int, int]) -> np.ndarray | None:
    """The cached array, or None when it is missing or unusable (then it is simply rebuilt).
    A ``None`` in ``shape`` is the channel count of a folder's own, 1 or 3."""
    try:
        with path.open("rb") as f:
            images = np.lib.format.read_array(f, allow_pickle=False)  # what np.load does for .npy
    except (OSError, ValueError, EOFError):
        return None
    fits = images.ndim == 4 and images.shape[1] in (1, 3) and all(n is None or n == m for n, m in zip(shape, images.shape))
    return images if fits and images.dtype == np.uint8 else None


def _write_cache(path: Path, images: np.ndarray) -> None:
    """Atomic (temporary file, then rename), so a killed or concurrent run never leaves half a file.
    A cache that cannot be written costs time, not correctness: warn and go on."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.save(f, images)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not cache decoded images in {path}: {e}", stacklevel=2)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _decode_files(files: list[Path], size: int, channels: int | None, desc: str) -> np.ndarray:
    """Decode in threads (Pillow releases the GIL while decoding and resizing), in chunks so a
    failure stops the work early and finished images never pile up in memory.

    ``channels=None``: each image is decoded in its own channels (1 for greyscale modes, else 3)
    into an RGB array (grey replicated); when every image was grey, one channel is kept.

    Pillow's decompression-bomb warning is silenced here: ``_decode`` applies gankd's own
    ``MAX_IMAGE_PIXELS`` and reports it in one line.
    """
    out = np.empty((len(files), channels or 3, size, size), np.uint8)
    all_grey = True
    chunk = 1024
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, progress(len(files), desc, "img") as bar, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for start in range(0, len(files), chunk):
            batch = files[start : start + chunk]
            for i, image in enumerate(pool.map(_decode, batch, [size] * len(batch), [channels] * len(batch)), start):
                out[i] = image  # (1, S, S) broadcasts to RGB
                all_grey &= image.shape[0] == 1
                bar.update()
    return np.ascontiguousarray(out[:, :1]) if channels is None and all_grey else out


def _decode(path: Path, size: int, channels: int | None) -> np.ndarray:
    """One image file as (channels, size, size); ``channels=None``: 1 if its mode is greyscale, else 3."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise GankdError(f"{path}: {img.width}x{img.height} pixels, over gankd's limit of {MAX_IMAGE_PIXELS:,} per image")
            if channels is None:
                channels = 1 if ImageMode.getmode(img.mode).basemode == "L" else 3
            return _to_array(img, size, channels)
    except GankdError:
        raise
    except Image.DecompressionBombError:  # over Pillow's own (larger) limit: refused from the header too
        raise GankdError(f"{path}: over gankd's limit of {MAX_IMAGE_PIXELS:,} pixels per image") from None
    except Exception as e:  # Pillow reports corrupt files with a dozen different exception types
        raise GankdError(f"cannot read image {path}: {e}") from e


def _to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Any Pillow image -> (channels, size, size) uint8: convert the mode, centre-crop to a square
    of the shorter side, resize with Pillow's bilinear filter. Alpha is dropped."""
    if img.mode.startswith("I;16"):  # convert() would clip 16-bit grey at 255, i.e. mostly white
        img = Image.fromarray(((np.asarray(img).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # a palette's transparency must go through RGBA (Pillow warns otherwise)
    img = img.convert("L" if channels == 1 else "RGB")
    width, height = img.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)
