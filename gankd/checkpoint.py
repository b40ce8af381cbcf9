"""Checkpoints: tensors in safetensors, everything else as JSON in its header. No pickle.

A gankd checkpoint is one ``.safetensors`` file. Its tensors are named ``generator.*``,
``critic.*``, ``opt_g.*``/``opt_d.*`` (optimiser moments) and ``rng.*`` (random-generator
states); its header metadata holds one key, ``gankd``, a JSON document with the architecture,
step, dataset, loss, seed and the whole run configuration. Loading parses a JSON header and
copies raw buffers: it can never execute code from the file.

Writes are atomic (temporary file in the same folder, flushed, fsync'd, renamed over the old
one, folder fsync'd), so a crash at any moment leaves either the old or the new checkpoint.

A generator may also be an ONNX file (:mod:`gankd.onnx_generator`: a checked graph run by ONNX
Runtime; loading it runs no code) or a TorchScript file of the user's own. TorchScript is code:
loading it runs what its author compiled in, so it is only ever loaded when the user names the file.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from gankd.errors import GankdError
from gankd.files import atomic_write_bytes
from gankd.models import Architecture, Generator, count_parameters
from gankd.onnx_generator import load_onnx_generator, looks_like_onnx

FORMAT = "gankd-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` atomically to ``path`` (a .safetensors file)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"gankd": json.dumps({"format": FORMAT, "version": VERSION, **meta})}
    atomic_write_bytes(Path(path), st_save(tensors, metadata=header))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a gankd checkpoint; any other file gets a clear error, and nothing is executed."""
    path = Path(path)
    if not path.is_file():
        raise GankdError(f"{path}: no such checkpoint file")
    payload = path.read_bytes()
    header_len = int.from_bytes(payload[:8], "little")
    looks_like_safetensors = len(payload) > 8 and 8 + header_len <= len(payload) and payload[8:9] == b"{"
    if not looks_like_safetensors and payload[:2] == b"PK" and is_torchscript(path):
        raise GankdError(f"{path}: a TorchScript file, not a gankd checkpoint (TorchScript is accepted as --teacher)")
    if not looks_like_safetensors and looks_like_onnx(payload[:16]):
        raise GankdError(f"{path}: an ONNX file, not a gankd checkpoint (ONNX is accepted by sample, info, evaluate and as --teacher)")
    if not looks_like_safetensors and payload[:1] in (b"\x80", b"P"):  # torch.save: raw pickle, or a zip of pickles
        raise GankdError(
            f"{path}: this is a pickle-based PyTorch file; gankd refuses to unpickle it because "
            "unpickling can run arbitrary code. Re-save the weights with safetensors, or pass a "
            "TorchScript generator you trust as --teacher."
        )
    try:
        tensors = st_load(payload)
        header = json.loads(payload[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("gankd", "null"))
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise GankdError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GankdError(f"{path}: a safetensors file, but not a gankd checkpoint (no gankd metadata)")
    if meta.get("version") != VERSION:
        raise GankdError(f"{path}: checkpoint version {meta.get('version')} is not supported (expected {VERSION})")
    return tensors, meta


def is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a one-line error naming the first mismatching tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise GankdError(f"{source}: tensors do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise GankdError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the architecture "
                f"in its metadata needs {tuple(expected[name].shape)}"
            )
    module.load_state_dict(state)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimiser state into tensors (moments, step counts) and JSON (param groups)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value)
    groups = [{**g, "betas": list(g["betas"])} if "betas" in g else dict(g) for g in state["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict], prefix: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in unprefixed(prefix, tensors).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_generator(path: str | Path, device: str | torch.device = "cpu", latent_dim: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """An eval-mode generator and its metadata, from a gankd checkpoint, an ONNX file (run by ONNX
    Runtime on the CPU; see :mod:`gankd.onnx_generator`) or a TorchScript file.

    For TorchScript the architecture is read by running it: ``latent_dim`` (default: the
    module's ``latent_dim`` attribute, else 100) is fed in and the image shape read off the
    output. ``meta["arch"]["depth"]`` is then ``None``.
    """
    path = Path(path)
    if not path.is_file():
        raise GankdError(f"{path}: no such file")
    if is_torchscript(path):
        return _load_torchscript_generator(path, torch.device(device), latent_dim)
    with path.open("rb") as file:
        if looks_like_onnx(file.read(16)):
            return load_onnx_generator(path)
    tensors, meta = read_checkpoint(path)
    if "arch" not in meta:
        raise GankdError(f"{path}: checkpoint metadata has no architecture")
    try:
        arch = Architecture.from_dict(meta["arch"])
    except (TypeError, ValueError) as exc:
        raise GankdError(f"{path}: bad architecture in metadata ({exc})") from None
    generator = Generator(arch)
    load_state(generator, unprefixed("generator", tensors), str(path))
    meta = {**meta, "path": str(path), "parameters": count_parameters(generator)}
    return generator.to(device).eval(), meta


def _load_torchscript_generator(path: Path, device: torch.device, latent_dim: int | None) -> tuple[nn.Module, dict[str, Any]]:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # TorchScript raises many types; all mean "not loadable"
        raise GankdError(f"{path}: not a loadable TorchScript file ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    module.eval()
    latent_dim = latent_dim or int(getattr(module, "latent_dim", 100))
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, latent_dim, device=device))
    except Exception as exc:
        raise GankdError(f"{path}: the TorchScript generator fails on a ({2}, {latent_dim}) latent batch: {str(exc).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[2] != out.shape[3] or out.shape[1] not in (1, 3):
        raise GankdError(f"{path}: a generator must map (N, {latent_dim}) latents to (N, C, S, S) images with C in (1, 3)")
    arch = {"depth": None, "image_size": int(out.shape[2]), "channels": int(out.shape[1]), "latent_dim": latent_dim}
    meta = {"format": "torchscript", "path": str(path), "arch": arch, "parameters": count_parameters(module)}
    return module, meta
