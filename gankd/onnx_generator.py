"""ONNX generators: check a file, then run it under ONNX Runtime as a PyTorch module.

Any framework can export a generator to ONNX, and loading one runs no code of its author's: the
file is a protobuf graph of standard operators that ONNX Runtime executes. That makes ONNX the
recommended format for bringing one's own teacher, and the format ``gankd export`` ships.

A file is accepted only if ``onnx.checker`` passes it and it is shaped like a generator: one
float input of rank 2 (N x latent, N dynamic), one output of rank 4 that gives (N, C, S, S)
images with C in (1, 3) on a latent batch. Tensors stored outside the file ("external data")
must lie in the file's own folder. Anything else ends in one line naming the file and the
problem (:class:`~gankd.errors.GankdError`).

This module sits below :mod:`gankd.checkpoint`, whose ``load_generator`` dispatches ONNX files
here, and above nothing but :mod:`gankd.errors`; ``onnx`` and ``onnxruntime`` are imported only
when an ONNX file is used, so gankd works without the ``onnx`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gankd.errors import GankdError

METADATA_KEY = "gankd"  # metadata_props key of the JSON document gankd writes on export
FORMAT = "gankd-onnx"
PROBE_BATCH = 2  # latents run once on load to read (and check) the image shape


def require_onnx(what: str) -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a one-line error naming the extra that provides them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise GankdError(f"{what}: needs the onnx extra (pip install 'gankd[onnx]'; missing {exc.name})") from None
    return onnx, onnxruntime


def looks_like_onnx(head: bytes) -> bool:
    """Whether a file's first bytes are an ONNX ModelProto: protobuf writes field 1 first, the
    ``ir_version`` varint (tag 0x08, a small number). A safetensors file has '{' at byte 8."""
    return len(head) >= 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[8:9] != b"{"


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options: ``threads`` intra-op threads (default: torch's thread count, so that
    ``OMP_NUM_THREADS`` governs both), one inter-op thread, and no logging of its own (a failing
    model becomes one GankdError line, not a log line before it)."""
    _, ort = require_onnx("ONNX Runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only
    return options


class OnnxGenerator(nn.Module):
    """An ONNX Runtime session behind ``nn.Module``: latents (N, latent) in, images (N, C, S, S)
    out, as torch tensors on the latents' device. It runs on the CPU, has no parameters and
    passes no gradient (a teacher needs none)."""

    def __init__(self, session: Any, latent_dim: int):
        super().__init__()
        self.session = session
        self.latent_dim = latent_dim
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        latents = np.ascontiguousarray(z.detach().reshape(z.shape[0], -1).to("cpu", torch.float32).numpy())
        images = self.session.run([self.output_name], {self.input_name: latents})[0]
        return torch.from_numpy(images).to(z.device)


def load_onnx_generator(path: Path) -> tuple[OnnxGenerator, dict[str, Any]]:
    """A checked ONNX file as an :class:`OnnxGenerator` and its metadata, shaped like
    ``load_generator``'s: ``arch`` (depth ``None`` unless gankd exported it), ``parameters``,
    and whatever gankd stored on export (dataset, teacher, source checkpoint)."""
    onnx, _ = require_onnx(str(path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...: all mean "not a model"
        raise GankdError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    check_external_data(model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise GankdError(f"{path}: invalid ONNX model ({_first_line(exc)})") from None
    return _generator(model, str(path), str(path))


def onnx_generator_from_bytes(data: bytes, name: str) -> tuple[OnnxGenerator, dict[str, Any]]:
    """The same checks and module for a serialised model held in memory (no external data)."""
    onnx, _ = require_onnx(name)
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise GankdError(f"{name}: invalid ONNX model ({_first_line(exc)})") from None
    return _generator(model, data, name)


def check_external_data(model: Any, path: Path) -> None:
    """Refuse tensors stored outside the model's folder (absolute paths, ``..``, links out of
    it) and external files that are missing; ONNX Runtime would otherwise read them."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    folder = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise GankdError(f"{path}: tensor {tensor.name!r} points at external data outside the model's folder ({location!r})")
        if not target.is_file():
            raise GankdError(f"{path}: tensor {tensor.name!r} needs external data file {location!r}, which is missing")


def _all_tensors(graph: Any) -> list[Any]:
    """Every TensorProto of a graph: initializers, sparse ones, node attributes, subgraphs."""
    tensors = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        tensors += [sparse.values, sparse.indices]
    for node in graph.node:
        for attribute in node.attribute:
            tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                tensors += _all_tensors(subgraph)
    return tensors


def _generator(model: Any, session_source: str | bytes, name: str) -> tuple[OnnxGenerator, dict[str, Any]]:
    latent_dim = _check_signature(model, name)
    _, ort = require_onnx(name)
    try:
        session = ort.InferenceSession(session_source, session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise GankdError(f"{name}: ONNX Runtime cannot load it ({_first_line(exc)})") from None
    generator = OnnxGenerator(session, latent_dim).eval()
    try:
        with torch.no_grad():
            images = generator(torch.zeros(PROBE_BATCH, latent_dim))
    except Exception as exc:
        raise GankdError(f"{name}: fails on a ({PROBE_BATCH}, {latent_dim}) latent batch ({_first_line(exc)})") from None
    if images.dim() != 4 or images.shape[0] != PROBE_BATCH or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise GankdError(f"{name}: a generator must map (N, {latent_dim}) latents to (N, C, S, S) images with C in (1, 3); "
                         f"this one gives {tuple(images.shape)} for N={PROBE_BATCH}")
    arch = {"depth": None, "image_size": int(images.shape[2]), "channels": int(images.shape[1]), "latent_dim": latent_dim}
    stored = _stored_metadata(model, name)
    if stored.get("arch") is not None:
        if any(stored["arch"].get(key) != arch[key] for key in ("image_size", "channels", "latent_dim")):
            raise GankdError(f"{name}: its gankd metadata describes {stored['arch']}, but the graph makes {arch}")
        arch["depth"] = stored["arch"].get("depth")
    parameters = stored.get("parameters")
    if parameters is None:  # a foreign graph: its float weights
        parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == 1)
    meta = {**stored, "format": "onnx", "path": name, "arch": arch, "parameters": parameters,
            "multiply_adds": stored.get("multiply_adds")}
    return generator, meta


def _check_signature(model: Any, name: str) -> int:
    """The latent size, once the graph is known to have one (N, latent) float input with a free
    N and one output of rank 4 (C in (1, 3) and square where the shapes are declared)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]  # IR < 4 lists weights as inputs too
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise GankdError(f"{name}: a generator graph has one input (latents) and one output (images); this one has "
                         f"{len(inputs)} input(s) and {len(outputs)} output(s)")
    z, images = inputs[0].type.tensor_type, outputs[0].type.tensor_type
    if z.elem_type != 1 or images.elem_type != 1:  # TensorProto.FLOAT
        raise GankdError(f"{name}: the input and output must be float32 tensors")
    z_dims = [d.dim_value if d.HasField("dim_value") else None for d in z.shape.dim]
    if not z.HasField("shape") or len(z_dims) != 2 or not z_dims[1]:
        raise GankdError(f"{name}: the input must have rank 2, (N, latent) with a fixed latent size; it is {_shape_text(z)}")
    if z_dims[0] is not None:
        raise GankdError(f"{name}: the batch dimension is fixed at {z_dims[0]}; export the generator with a dynamic batch")
    image_dims = [d.dim_value if d.HasField("dim_value") else None for d in images.shape.dim]
    if images.HasField("shape") and (
        len(image_dims) != 4 or image_dims[1] not in (None, 1, 3) or None not in image_dims[2:] and image_dims[2] != image_dims[3]
    ):
        raise GankdError(f"{name}: the output must be (N, C, S, S) images with C in (1, 3); it is {_shape_text(images)}")
    return z_dims[1]


def _stored_metadata(model: Any, name: str) -> dict[str, Any]:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                stored = json.loads(prop.value)
            except ValueError:
                stored = None
            if not isinstance(stored, dict) or stored.get("format") != FORMAT or not isinstance(stored.get("arch"), dict):
                raise GankdError(f"{name}: unreadable gankd metadata")
            return stored
    return {}


def _shape_text(tensor_type: Any) -> str:
    if not tensor_type.HasField("shape"):
        return "undeclared"
    return "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim) + ")"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__
