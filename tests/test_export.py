"""``gankd export`` to ONNX, and ONNX generators as inputs: parity, metadata, a plain ONNX
Runtime session, distillation from an ONNX teacher, and hostile files refused with one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import run_gankd
from gankd.checkpoint import load_generator, read_checkpoint
from gankd.errors import GankdError
from gankd.export import (FLOAT_TOLERANCE, INT8_QUALITY, PARITY_LATENTS, ExportResult, QualityTolerance, int8_quality, int8_verdict,
                          onnx_bytes, parity)
from gankd.sampling import sample_latents

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402


@pytest.fixture(scope="module")
def exported(mnist_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture teacher exported through the real CLI, float32 and int8; what the int8 export
    printed is kept beside it (teacher-int8.txt)."""
    out = tmp_path_factory.mktemp("onnx")
    paths = {"float32": out / "teacher.onnx", "int8": out / "teacher-int8.onnx"}
    run_gankd("export", str(mnist_teacher), "--out", str(paths["float32"]))
    printed = run_gankd("export", str(mnist_teacher), "--out", str(paths["int8"]), "--int8", "--check-samples", "200").stdout
    paths["int8"].with_suffix(".txt").write_text(printed)
    return paths


def _pytorch_images(checkpoint: Path, z: torch.Tensor) -> np.ndarray:
    generator, _ = load_generator(checkpoint)
    with torch.inference_mode():
        return generator(z).numpy()


# --------------------------------------------------------------------------- export


def test_float_export_runs_in_a_plain_onnxruntime_session(mnist_teacher: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    """No gankd in the process that runs the file; any batch size; images match PyTorch's."""
    latents = {n: sample_latents(n, 100, seed=7) for n in (1, 5)}
    for n, z in latents.items():
        np.save(tmp_path / f"z{n}.npy", z.numpy())
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(exported['float32'])!r}, providers=['CPUExecutionProvider'])\n"
        "assert [i.name for i in s.get_inputs()] == ['z'] and [o.name for o in s.get_outputs()] == ['images']\n"
        "for n in (1, 5):\n"
        f"    np.save({str(tmp_path)!r} + f'/x{{n}}.npy', s.run(None, {{'z': np.load({str(tmp_path)!r} + f'/z{{n}}.npy')}})[0])\n"
        "assert not any(m == 'gankd' or m.startswith('gankd.') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    for n, z in latents.items():
        images = np.load(tmp_path / f"x{n}.npy")
        assert images.shape == (n, 1, 32, 32)
        assert np.abs(images - _pytorch_images(mnist_teacher, z)).max() <= FLOAT_TOLERANCE.max_abs


def test_export_prints_parity_and_writes_metadata(mnist_teacher: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    out = run_gankd("export", str(mnist_teacher), "--out", str(tmp_path / "t.onnx"), "--opset", "13").stdout
    max_diff = float(out.split("max |ONNX Runtime - PyTorch| ")[1].split()[0])
    assert 0 <= max_diff <= FLOAT_TOLERANCE.max_abs and "opset 13" in out

    model = onnx.load(str(exported["float32"]))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["gankd"])
    _, source_meta = read_checkpoint(mnist_teacher)
    assert meta["arch"] == source_meta["arch"] == {"depth": 16, "image_size": 32, "channels": 1, "latent_dim": 100}
    assert meta["latent_dim"] == 100 and meta["precision"] == "float32" and meta["gankd_version"]
    assert meta["source"] == {"file": mnist_teacher.name, "sha256": hashlib.sha256(mnist_teacher.read_bytes()).hexdigest()}
    assert meta["dataset"]["kind"] == "mnist" and meta["parameters"] == source_meta["parameters"]
    # dynamic batch: the input's first dimension is symbolic
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def _psnr_to_pytorch(exported: Path, checkpoint: Path, seed: int) -> float:
    generator, _ = load_generator(exported)
    z = sample_latents(PARITY_LATENTS, 100, seed=seed)
    with torch.inference_mode():
        images = generator(z).numpy().astype(np.float64)
    return 10 * np.log10(4 / float(np.square(images - _pytorch_images(checkpoint, z)).mean()))


def test_int8_export_quantises_the_first_layer_and_reports_quality_and_speed(mnist_teacher: Path, exported: dict[str, Path]) -> None:
    int8, float32 = exported["int8"], exported["float32"]
    assert int8.stat().st_size < 0.6 * float32.stat().st_size
    ops = [node.op_type for node in onnx.load(str(int8)).graph.node]
    assert {"QuantizeLinear", "DequantizeLinear", "Gemm"} <= set(ops)
    assert ops.count("ConvTranspose") == 3 and "DepthToSpace" not in ops  # the convolutions stay float: no slower
    generator, meta = load_generator(int8)
    assert meta["precision"] == "int8" and meta["int8_layers"] == "first"
    # lossy, and within the quality tolerance on latents the check never saw
    assert INT8_QUALITY.psnr_db <= _psnr_to_pytorch(int8, mnist_teacher, seed=11) < 80

    printed = int8.with_suffix(".txt").read_text()
    is_int8, is_float = (float(x) for x in printed.split(" IS ")[1].split(" (")[0].split(" against "))
    assert abs(is_int8 / is_float - 1) <= INT8_QUALITY.is_change
    assert float(printed.split("PSNR ")[1].split(" dB")[0]) >= INT8_QUALITY.psnr_db and "on 200 fixed latents" in printed
    assert "the speed at batch 1" in printed and "throughput at batch 64" in printed and "x smaller file" in printed
    assert ("int8 is no slower here" in printed) != ("float32 is faster on this machine" in printed)


def test_export_help_names_both_int8_layouts_and_the_check() -> None:
    printed = run_gankd("export", "--help").stdout
    assert "--int8-convs" in printed and "--check-samples N" in printed and f"within {INT8_QUALITY.is_change * 100:g}%" in printed


def test_int8_convs_export_runs_the_hidden_layers_as_int8_subpixel_convolutions(mnist_teacher: Path, exported: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "convs.onnx"
    run_gankd("export", str(mnist_teacher), "--out", str(out), "--int8-convs", "--check-samples", "100", "--quiet")
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops.count("DepthToSpace") == 2 and ops.count("ConvTranspose") == 1 and ops.count("Conv") == 2
    _, meta = load_generator(out)
    assert meta["precision"] == "int8" and meta["int8_layers"] == "first and hidden"
    assert out.stat().st_size < exported["int8"].stat().st_size  # the hidden weights are int8 too
    assert INT8_QUALITY.psnr_db <= _psnr_to_pytorch(out, mnist_teacher, seed=12) < 80


@pytest.mark.parametrize("tolerance, message", [
    (QualityTolerance(psnr_db=99.0, is_change=1.0, fid=1e9), "PSNR to float32"),
    (QualityTolerance(psnr_db=0.0, is_change=0.0, fid=1e9), "IS "),
])
def test_int8_quality_check_fails_loudly_and_writes_nothing(mnist_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tolerance: QualityTolerance, message: str) -> None:
    import gankd.export

    monkeypatch.setattr(gankd.export, "INT8_QUALITY", tolerance)
    out = tmp_path / "never.onnx"
    with pytest.raises(GankdError, match=f"int8 quality check failed on 20 latents: {message}.*nothing written"):
        gankd.export.export_generator(mnist_teacher, out, int8=True, check_samples=20)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_int8_quality_of_other_generators_is_the_fid_to_the_float_images(mnist_teacher: Path) -> None:
    """Not digits: the FID between the two models' images of the same latents (Inception); zero
    for the float model itself, and over the tolerance for a visibly different one."""
    generator, meta = load_generator(mnist_teacher)
    meta = {**meta, "dataset": {"kind": "fashion-mnist"}}
    same = int8_quality(generator, generator, meta, 50, "same.onnx")
    assert same["psnr_db"] == float("inf") and abs(same["fid_to_float32"]) < 1e-6 and "is_change" not in same
    shifted, _ = load_generator(mnist_teacher)
    with torch.no_grad():
        shifted.net[-2].bias.add_(0.5)  # the output layer's bias (before tanh): brighter images
    with pytest.raises(GankdError, match="FID to float32's images"):
        int8_quality(generator, shifted, {**meta, "arch": meta["arch"]}, 50, "shifted.onnx")


def _timed(float_us: float, int8_us: float, float_rate: float, int8_rate: float) -> ExportResult:
    speed = {"onnxruntime float32": {"latency_ms_best": float_us / 1000, "images_per_s_best": float_rate},
             "onnxruntime int8": {"latency_ms_best": int8_us / 1000, "images_per_s_best": int8_rate}}
    float32 = ExportResult(Path("f.onnx"), "float32", 300_000, 17, b"")
    return ExportResult(Path("q.onnx"), "int8", 100_000, 17, b"", speed=speed, float32=float32)


def test_int8_verdict_says_when_float_is_the_better_file() -> None:
    assert "int8 is no slower here" in int8_verdict(_timed(30, 29, 90_000, 92_000))
    assert "int8 is no slower here" in int8_verdict(_timed(30, 31, 90_000, 87_000))  # within the timing noise
    slower = int8_verdict(_timed(30, 41, 90_000, 95_000))
    assert "float32 is faster on this machine at batch 1:" in slower and "0.73x the speed at batch 1" in slower
    assert "3.0x smaller file" in slower and "ship float32 (no --int8)" in slower
    assert "at batch 1 and batch 64" in int8_verdict(_timed(30, 41, 90_000, 60_000))


def test_parity_failure_is_loud_and_writes_nothing(mnist_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator, _ = load_generator(mnist_teacher)
    data = onnx_bytes(generator)
    with torch.no_grad():
        generator.net[0].bias.add_(0.5)  # the PyTorch side no longer matches the graph
    with pytest.raises(GankdError, match="parity check failed"):
        parity(generator, data, "x.onnx", FLOAT_TOLERANCE)

    import gankd.export

    monkeypatch.setattr(gankd.export, "FLOAT_TOLERANCE", gankd.export.Tolerance(max_abs=0.0, mse=0.0))
    out = tmp_path / "never.onnx"
    with pytest.raises(GankdError, match="parity check failed.*nothing written"):
        gankd.export.export_generator(mnist_teacher, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_takes_only_gankd_checkpoints(exported: dict[str, Path], tmp_path: Path) -> None:
    result = run_gankd("export", str(exported["float32"]), "--out", str(tmp_path / "again.onnx"), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "export takes a gankd checkpoint" in result.stderr


# --------------------------------------------------------------------------- ONNX generators as inputs


def test_sample_info_evaluate_accept_onnx(mnist_teacher: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    grids = {}
    for name, path in (("pytorch", mnist_teacher), ("onnx", exported["float32"])):
        run_gankd("sample", str(path), "--n", "16", "--seed", "3", "--out", str(tmp_path / f"{name}.png"))
        with Image.open(tmp_path / f"{name}.png") as image:
            grids[name] = np.asarray(image, dtype=np.int16)
    assert np.abs(grids["onnx"] - grids["pytorch"]).max() <= 1  # same images, to 8-bit rounding

    info = json.loads(run_gankd("info", str(exported["float32"]), "--json").stdout)
    source = json.loads(run_gankd("info", str(mnist_teacher), "--json").stdout)
    assert info["format"] == "onnx" and info["architecture"] == source["architecture"]
    assert info["parameters"] == source["parameters"] and info["multiply_adds_per_image"] == source["multiply_adds_per_image"]

    scores = {}
    for name, path in (("pytorch", mnist_teacher), ("onnx", exported["float32"])):
        json_out = tmp_path / f"{name}.json"
        run_gankd("evaluate", str(path), "--teacher", str(mnist_teacher), "--metrics", "is,fidelity,cost",
                  "--samples", "200", "--json", str(json_out), "--cache-dir", str(tmp_path / "cache"))
        scores[name] = json.loads(json_out.read_text())["metrics"]
    assert scores["onnx"]["is"]["mean"] == pytest.approx(scores["pytorch"]["is"]["mean"], abs=1e-4)
    assert scores["onnx"]["fidelity"]["mse"] < 1e-10  # the ONNX teacher against its own source
    assert scores["onnx"]["cost"]["parameters"] == scores["pytorch"]["cost"]["parameters"]


def test_distill_from_an_onnx_teacher(mnist_teacher: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    """A student distilled from the ONNX export matches the one distilled from the safetensors
    teacher (same seed): the teachers' images differ by float rounding only. (The biases before
    BatchNorm get no gradient, so Adam moves them by noise: the students are compared by their
    convolution weights and by their images. Adam divides by the gradients' own size, so where a
    gradient is near zero the rounding can move a weight by up to ~lr per step (1.7e-3 after 6
    steps, measured on a CPU without AVX-512; the median 5e-6): 95% of each layer's weights are
    held to 2e-4.)"""
    students = {}
    for name, teacher in (("safetensors", mnist_teacher), ("onnx", exported["float32"])):
        out = tmp_path / name
        run_gankd("distill", "--teacher", str(teacher), "--out", str(out), "--depth", "4", "--steps", "6",
                  "--batch-size", "32", "--log-every", "3", "--sample-every", "6", "--checkpoint-every", "6")
        students[name] = read_checkpoint(out / "generator.safetensors")
    (onnx_weights, onnx_meta), (ref_weights, _) = students["onnx"], students["safetensors"]
    assert onnx_meta["step"] == 6 and onnx_meta["teacher"]["path"] == str(exported["float32"])
    assert onnx_meta["teacher"]["parameters"] == read_checkpoint(mnist_teacher)[1]["parameters"]
    for name, tensor in ref_weights.items():
        if name.startswith("generator.") and name.endswith(".weight"):
            moved = (onnx_weights[name] - tensor).abs().flatten()
            assert float(moved.quantile(0.95)) < 2e-4, (name, float(moved.quantile(0.95)))
    z = sample_latents(256, 100, seed=5)
    ours, reference = (_pytorch_images(tmp_path / name / "generator.safetensors", z) for name in ("onnx", "safetensors"))
    assert np.square(ours - reference).mean() < 1e-5 and np.abs(ours - reference).max() < 0.02


# --------------------------------------------------------------------------- hostile files


def _graph_file(path: Path, z_shape: list, out_shape: list | None, target: list[int], z_type: int = TensorProto.FLOAT) -> Path:
    """A small valid ONNX model: latents reshaped to ``target`` (0 keeps the batch), with the
    given declared input and output shapes (``None``: rank 4, sizes undeclared)."""
    out_shape = out_shape or ["N", "C", "H", "W"]
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(target)], target)
    cast = [helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        cast + [helper.make_node("Reshape", ["zf", "shape"], ["images"])], "g",
        [helper.make_tensor_value_info("z", z_type, z_shape)],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, out_shape)], [shape])
    # IR 8, opset 17's own: onnx writes its newest IR by default, which the installed ONNX Runtime may
    # not read yet (onnx 1.23 writes 14, onnxruntime 1.30 reads up to 13; seen on the GPU machine).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def _truncated(source: Path, path: Path) -> Path:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


def _with_external_weights(source: Path, path: Path, location: str) -> Path:
    """The exported model with its largest weight moved to an external file at ``location``."""
    model = onnx.load(str(source))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (path.parent / location).parent.mkdir(parents=True, exist_ok=True)
    (path.parent / location).write_bytes(tensor.raw_data)
    onnx.external_data_helper.set_external_data(tensor, location=location, offset=0, length=len(tensor.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    path.write_bytes(model.SerializeToString())
    return path


HOSTILE = {
    "input rank 3": (lambda d, src: _graph_file(d / "m.onnx", ["N", 16, 1], None, [0, 1, 4, 4]), "input must have rank 2"),
    "fixed batch": (lambda d, src: _graph_file(d / "m.onnx", [4, 16], None, [0, 1, 4, 4]), "batch dimension is fixed"),
    "integer latents": (lambda d, src: _graph_file(d / "m.onnx", ["N", 16], None, [0, 1, 4, 4], TensorProto.INT64), "float32"),
    "declared non-square output": (lambda d, src: _graph_file(d / "m.onnx", ["N", 16], ["N", 1, 2, 8], [0, 1, 2, 8]), "(N, C, S, S)"),
    "declared rank-3 output": (lambda d, src: _graph_file(d / "m.onnx", ["N", 16], ["N", 4, 4], [0, 4, 4]), "(N, C, S, S)"),
    "rank-3 output": (lambda d, src: _graph_file(d / "m.onnx", ["N", 16], ["N", "C", "H", "W"], [0, 4, 4]), "(N, C, S, S)"),
    "two channels": (lambda d, src: _graph_file(d / "m.onnx", ["N", 32], None, [0, 2, 4, 4]), "C in (1, 3)"),
    "fails when run": (lambda d, src: _graph_file(d / "m.onnx", ["N", 16], None, [0, 1, 4, 5]), "fails on a (2, 16) latent batch"),
    "truncated": (lambda d, src: _truncated(src, d / "m.onnx"), "not a readable ONNX model"),
    "external data in the parent folder": (lambda d, src: _with_external_weights(src, d / "m.onnx", "../outside.bin"), "outside the model's folder"),
    "external data at an absolute path": (lambda d, src: _with_external_weights(src, d / "m.onnx", str(d.parent / "abs.bin")), "outside the model's folder"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_onnx_files_end_in_one_line(case: str, exported: dict[str, Path], tmp_path: Path) -> None:
    """Through ``gankd info``; and as a teacher for two of them (the same loader serves both)."""
    make, message = HOSTILE[case]
    folder = tmp_path / "models"
    folder.mkdir()
    path = make(folder, exported["float32"])
    commands = [["info", str(path)]]
    if case in ("truncated", "external data in the parent folder"):
        commands.append(["distill", "--teacher", str(path), "--out", str(tmp_path / "run"), "--steps", "1"])
    for command in commands:
        result = run_gankd(*command, check=False)
        assert result.returncode == 1, (case, command, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"gankd: error: {path}: "), result.stderr
        assert message in result.stderr, result.stderr
    assert not (tmp_path / "run" / "generator.safetensors").exists()


def test_external_data_inside_the_folder_is_accepted(mnist_teacher: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    path = _with_external_weights(exported["float32"], tmp_path / "m.onnx", "weights/w.bin")
    generator, _ = load_generator(path)
    z = sample_latents(4, 100, seed=1)
    with torch.inference_mode():
        images = generator(z).numpy()
    assert np.abs(images - _pytorch_images(mnist_teacher, z)).max() <= FLOAT_TOLERANCE.max_abs


def test_without_the_onnx_extra_one_line_names_it(exported: dict[str, Path]) -> None:
    script = ("import sys; sys.modules['onnxruntime'] = None\n"
              "from gankd.cli import main\n"
              f"sys.exit(main(['info', {str(exported['float32'])!r}]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "needs the onnx extra (pip install 'gankd[onnx]'" in result.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=8))
def test_fuzz_damaged_onnx_files_load_or_fail_with_gankd_error(exported: dict[str, Path], tmp_path: Path, cut: float, flips: list) -> None:
    """A truncated or bit-damaged export either still loads as a generator or raises GankdError."""
    data = bytearray(exported["float32"].read_bytes())
    data = data[: max(2, int(len(data) * cut))] if cut < 1 else data
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    path = tmp_path / "damaged.onnx"
    path.write_bytes(bytes(data))
    try:
        generator, meta = load_generator(path)
    except GankdError:
        return
    assert meta["arch"]["latent_dim"] >= 1 and meta["arch"]["channels"] in (1, 3)
