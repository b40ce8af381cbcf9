"""Checkpoints: tensors in safetensors, everything else as JSON in its header. No pickle.

A gankd checkpoint is one ``.safetensors`` file. Its tensors are named ``generator.*``,
``critic.*``, ``opt_g.*``/``opt_d.*`` (optimiser moments) and ``rng.*`` (random-generator
states); its header metadata holds one key, ``gankd``, a JSON document with the architecture,
step, dataset, loss, seed and the whole run configuration. Loading parses a JSON header and
copies raw buffers: it can never execute code from the file.

Writes are atomic (temporary file in the same folder, flushed, fsync'd, renamed over the old
one, folder fsync'd), so a crash at any moment leaves either the old or the new checkpoint.

Reading trusts nothing in the file: the header's size and nesting, the metadata's types and
ranges, and the generator's tensor names, shapes, dtypes and values (finite) are all checked
before a network is built, so a crafted file ends with one line, not a traceback or a huge
allocation. Tensors are never converted: a float16 or int32 weight is refused, not cast.

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
from gankd.models import Architecture, Critic, Generator, count_parameters
from gankd.onnx_generator import load_onnx_generator, looks_like_onnx

FORMAT = "gankd-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` atomically to ``path`` (a .safetensors file)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"gankd": json.dumps({"format": FORMAT, "version": VERSION, **meta})}
    atomic_write_bytes(Path(path), st_save(tensors, metadata=header))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a gankd checkpoint; any other file gets a clear error, and nothing is executed.

    Checked before any tensor is built: the header's size (``MAX_HEADER_BYTES``) and the nesting
    of its JSON (``MAX_JSON_DEPTH``), the format and version, and the type and range of every
    metadata key gankd reads (``METADATA_TYPES``).
    """
    path = Path(path)
    if not path.is_file():
        raise GankdError(f"{path}: no such checkpoint file")
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise GankdError(f"{path}: cannot read ({exc.strerror or exc})") from None
    # A safetensors file is an 8-byte little-endian header length, then the header, a JSON object.
    if payload[8:9] != b"{":
        if payload[:4] == b"PK\x03\x04" and is_torchscript(path):
            raise GankdError(f"{path}: a TorchScript file, not a gankd checkpoint (TorchScript is accepted as --teacher)")
        if looks_like_onnx(payload[:16]):
            raise GankdError(f"{path}: an ONNX file, not a gankd checkpoint (ONNX is accepted by sample, info, evaluate and as --teacher)")
        if payload[:4] == b"PK\x03\x04" or payload[:1] == b"\x80":  # torch.save: a zip of pickles, or a raw pickle
            raise GankdError(
                f"{path}: this is a pickle-based PyTorch file; gankd refuses to unpickle it because "
                "unpickling can run arbitrary code. Re-save the weights with safetensors, or pass a "
                "TorchScript generator you trust as --teacher."
            )
        raise GankdError(f"{path}: not a safetensors checkpoint")
    header_len = int.from_bytes(payload[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise GankdError(f"{path}: safetensors header of {header_len:,} bytes, over gankd's limit of {MAX_HEADER_BYTES:,}")
    if 8 + header_len > len(payload):
        raise GankdError(f"{path}: not a readable safetensors checkpoint (truncated: the header needs "
                         f"{8 + header_len:,} bytes, the file has {len(payload):,})")
    header = _parse_json(payload[8 : 8 + header_len], path, "safetensors header")
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    text = metadata.get("gankd") if isinstance(metadata, dict) else None
    meta = _parse_json(text, path, "gankd metadata") if isinstance(text, str) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GankdError(f"{path}: a safetensors file, but not a gankd checkpoint (no gankd metadata)")
    if meta.get("version") != VERSION:
        raise GankdError(f"{path}: checkpoint version {meta.get('version')} is not supported (expected {VERSION})")
    check_metadata(meta, path)
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError) as exc:
        raise GankdError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    return tensors, meta


# Checkpoint metadata keys gankd reads: (type, lowest value for numbers). Other keys are kept unread.
METADATA_TYPES: dict[str, tuple[type | tuple[type, ...], float | None]] = {
    "arch": (dict, None),
    "critic_arch": (dict, None),
    "step": (int, 0),
    "elapsed_s": ((int, float), 0),
    "parameters": (int, 0),
    "seed": (int, 0),
    "world_size": (int, 1),
    "method": (str, None),
    "loss": (str, None),
    "stopped": (str, None),
    "eval_pending": (bool, None),
    "config": (dict, None),
    "plateau": (dict, None),
    "teacher": (dict, None),
    "dataset": ((dict, type(None)), None),
    "opt_g_groups": (list, None),
    "opt_d_groups": (list, None),
}
MAX_HEADER_BYTES = 16 * 2**20  # a gankd header is a few kB
MAX_JSON_DEPTH = 32  # gankd's own metadata nests 4 deep


def check_metadata(meta: dict[str, Any], path: Path) -> None:
    """Types and ranges of the metadata keys gankd reads, and of the teacher it names."""
    checks = [(key, meta[key], *METADATA_TYPES[key]) for key in METADATA_TYPES if key in meta]
    teacher = meta.get("teacher")
    if isinstance(teacher, dict):
        checks += [("teacher.path", teacher.get("path"), str, None), ("teacher.parameters", teacher.get("parameters"), int, 0)]
    for key, value, kind, low in checks:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise GankdError(f"{path}: metadata {key!r} has the wrong type ({_short(value)})")
        if low is not None and is_number and not low <= value < float("inf"):
            raise GankdError(f"{path}: metadata {key!r} is out of range ({_short(value)})")


def _parse_json(text: bytes | str, path: Path, what: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GankdError(f"{path}: not a readable safetensors checkpoint ({what}: {exc})") from None
    except RecursionError:
        raise GankdError(f"{path}: {what} nested too deeply") from None
    level = [value]
    for _ in range(MAX_JSON_DEPTH + 1):  # level by level: no recursion
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())]
        if not level:
            return value
    raise GankdError(f"{path}: {what} nested over {MAX_JSON_DEPTH} levels deep")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def check_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, prefix: str = "") -> None:
    """``state`` fits ``module`` exactly: the same tensor names, shapes and dtypes (nothing is
    converted), and finite values. ``module`` may live on the meta device: checking costs no
    memory, so a crafted file is refused before a network of its size is built. Errors name the
    tensor as the file does (``prefix`` + name)."""
    expected = module.state_dict()
    named = (lambda names: [f"{prefix}.{n}" for n in names]) if prefix else list
    missing = named(sorted(set(expected) - set(state)))
    unexpected = named(sorted(set(state) - set(expected)))
    if missing or unexpected:
        raise GankdError(f"{source}: tensors do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        shown = f"{prefix}.{name}" if prefix else name
        if tensor.shape != expected[name].shape:
            raise GankdError(
                f"{source}: tensor {shown!r} has shape {tuple(tensor.shape)}, the architecture "
                f"in its metadata needs {tuple(expected[name].shape)}"
            )
        if tensor.dtype != expected[name].dtype:
            raise GankdError(f"{source}: tensor {shown!r} is {tensor.dtype}, gankd stores {expected[name].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise GankdError(f"{source}: tensor {shown!r} holds NaN or infinite values")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict after :func:`check_state`: a one-line error naming the first bad tensor."""
    check_state(module, state, source)
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
    try:
        for name, value in unprefixed(prefix, tensors).items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = value
        for group in groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise GankdError(f"the checkpoint's optimiser state {prefix!r} does not fit the run's optimiser ({exc})") from None


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
    if meta.get("kind") == "critic":
        raise GankdError(f"{path}: a run's critic, not a generator (the generator is {path.parent / 'generator.safetensors'})")
    if "arch" not in meta:
        raise GankdError(f"{path}: checkpoint metadata has no architecture")
    try:
        arch = Architecture.from_dict(meta["arch"])
    except (GankdError, TypeError) as exc:
        raise GankdError(f"{path}: bad architecture in metadata ({exc})") from None
    state = unprefixed("generator", tensors)
    with torch.device("meta"):
        check_state(Generator(arch), state, str(path), "generator")
    generator = Generator(arch)
    generator.load_state_dict(state)
    meta = {**meta, "path": str(path), "parameters": count_parameters(generator)}
    return generator.to(device).eval(), meta


def save_critic(path: Path, critic: nn.Module, run_meta: dict[str, Any]) -> None:
    """The critic of a finished run beside its generator (``critic.safetensors``): what a student
    needs to use the teacher's own critic (``gankd distill --critic``). Weights and metadata only."""
    meta = {**run_meta, "kind": "critic", "critic_arch": critic.arch.to_dict(), "batch_norm": critic.batch_norm}
    meta.pop("arch", None)
    save_checkpoint(path, prefixed("critic", critic.state_dict()), meta)


def load_critic(path: str | Path, image_size: int | None = None, channels: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A critic saved by :func:`save_critic`, refused in one line when it judges images of another
    shape than ``image_size`` x ``image_size`` x ``channels`` (None: any)."""
    path = Path(path)
    if not path.is_file():
        raise GankdError(f"{path}: no such file")
    tensors, meta = read_checkpoint(path)
    if meta.get("kind") != "critic" or "critic_arch" not in meta:
        raise GankdError(f"{path}: not a critic file (a finished gan run writes one as critic.safetensors)")
    try:
        arch = Architecture.from_dict(meta["critic_arch"])
    except (GankdError, TypeError) as exc:
        raise GankdError(f"{path}: bad critic architecture in metadata ({exc})") from None
    wanted = (image_size or arch.image_size, channels or arch.channels)
    if (arch.image_size, arch.channels) != wanted:
        raise GankdError(f"{path}: the critic judges {arch.channels}x{arch.image_size}x{arch.image_size} images, "
                         f"the student makes {wanted[1]}x{wanted[0]}x{wanted[0]}")
    state = unprefixed("critic", tensors)
    with torch.device("meta"):
        check_state(Critic(arch, bool(meta.get("batch_norm"))), state, str(path), "critic")
    critic = Critic(arch, bool(meta.get("batch_norm")))
    critic.load_state_dict(state)
    return critic, {**meta, "path": str(path), "parameters": count_parameters(critic)}


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
    if not bool(torch.isfinite(out).all()):
        raise GankdError(f"{path}: the TorchScript generator gives NaN or infinite images")
    arch = {"depth": None, "image_size": int(out.shape[2]), "channels": int(out.shape[1]), "latent_dim": latent_dim}
    meta = {"format": "torchscript", "path": str(path), "arch": arch, "parameters": count_parameters(module)}
    return module, meta


def finished(path: Path, steps: int) -> bool:
    """Whether ``path`` (a generator.safetensors) is the end of a run of at most ``steps`` steps."""
    try:
        meta = read_checkpoint(path)[1]
    except GankdError:
        return False
    return meta.get("step") == steps or (bool(meta.get("stopped")) and meta.get("step", 0) <= steps)
