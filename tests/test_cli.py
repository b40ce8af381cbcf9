"""The command line as a user meets it: outputs, --help, and one-line errors with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_gankd
from gankd.checkpoint import prefixed, save_checkpoint
from gankd.models import Architecture, Generator

COMMANDS = ["train", "distill", "sample", "info", "params", "evaluate", "sweep", "demo", "export"]


def test_params_prints_the_paper_count() -> None:
    assert run_gankd("params", "--depth", "2", "--image-size", "64", "--channels", "1").stdout.strip() == "28351"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command: str) -> None:
    out = run_gankd(command, "--help").stdout
    assert "usage: gankd " + command in out
    # argparse prints each option then its help text; an option with no help has nothing after it
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("-"):
            rest = line.strip().split("  ", 1)
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert len(rest) == 2 or (following and not following.startswith("-")), f"no help for {line.strip()}"


def test_sample_and_info(mnist_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    run_gankd("sample", str(mnist_teacher), "--n", "16", "--seed", "3", "--out", str(out))
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 4 * 32
    first = out.read_bytes()
    run_gankd("sample", str(mnist_teacher), "--n", "16", "--seed", "3", "--out", str(out))
    assert out.read_bytes() == first  # same seed, same picture

    student = tmp_path / "student.safetensors"
    arch = Architecture(depth=2, image_size=32)
    save_checkpoint(student, prefixed("generator", Generator(arch).state_dict()),
                    {"arch": arch.to_dict(), "method": "mse", "teacher": {"path": str(mnist_teacher), "parameters": 1_000_000}})
    info = json.loads(run_gankd("info", str(student), "--json").stdout)
    assert info["parameters"] == 13_487 and info["compression_ratio"] == "74:1"
    assert "compression ratio" in run_gankd("info", str(student)).stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--depth", "0"], "must be >= 1"),
    (["train", "--steps", "-5"], "must be >= 0"),
    (["distill", "--teacher", "x", "--alpha", "1.5"], "must be in [0, 1]"),
    (["train", "--image-size", "48"], "invalid choice"),
    (["params", "--depth", "abc"], "expected an integer"),
])
def test_out_of_range_values_are_usage_errors(args: list[str], message: str) -> None:
    result = run_gankd(*args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("gankd: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_config_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"depht": 8}))
    line = one_line_error(run_gankd("train", "--config", str(config), "--out", str(tmp_path / "r"), check=False))
    assert "'depht'" in line and "did you mean 'depth'" in line


@pytest.mark.parametrize("make, message", [
    (lambda p: ["train", "--data", str(p / "nowhere"), "--out", str(p / "r"), "--steps", "1"], "nowhere"),
    (lambda p: ["distill", "--teacher", str(p / "missing.safetensors"), "--out", str(p / "r")], "missing.safetensors"),
    (lambda p: ["info", str(p / "evil.pt")], "refuses to unpickle"),
    (lambda p: ["sample", str(p / "config.json")], "config.json"),
])
def test_bad_inputs_end_with_one_clear_line(tmp_path: Path, make, message: str) -> None:
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "config.json").write_text("{}")
    assert message in one_line_error(run_gankd(*make(tmp_path), check=False))


def test_resume_refuses_changed_options(tmp_path: Path) -> None:
    out = str(tmp_path / "r")
    run_gankd("train", "--out", out, "--depth", "2", "--loss", "dcgan", "--steps", "2", "--log-every", "1")
    line = one_line_error(run_gankd("train", "--out", out, "--depth", "4", "--resume", check=False))
    assert "depth" in line
    line = one_line_error(run_gankd("train", "--out", out, "--depth", "2", "--steps", "3", check=False))
    assert "--resume" in line
    run_gankd("train", "--out", out, "--steps", "3", "--resume")  # more steps is fine


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's main job, with few steps: teacher, MSE student, comparison grid, summary."""
    out = tmp_path / "demo"
    result = run_gankd("demo", "--out", str(out), "--teacher-steps", "30", "--student-steps", "60", "--device", "cpu")
    assert "teacher-fidelity MSE" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_parameters"] == 369_377 and summary["student_parameters"] == 28_253
    assert summary["fidelity_mse_trained_student"] < summary["fidelity_mse_untrained_student"]
    with Image.open(out / "teacher_vs_student.png") as image:
        assert image.format == "PNG" and image.width > 2 * 8 * 64
