"""The command line as a user meets it: outputs, --help, and one-line errors with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_gankd
from gankd.checkpoint import prefixed, save_checkpoint
from gankd.cli import build_parser, main
from gankd.models import Architecture, Generator
from gankd.progress import LineProgress, set_quiet

COMMANDS = ["train", "distill", "sample", "info", "params", "evaluate", "sweep", "limit", "demo", "export"]


def test_params_prints_the_paper_count() -> None:
    assert run_gankd("params", "--depth", "2", "--image-size", "64", "--channels", "1").stdout.strip() == "28351"


def option_entries(help_text: str) -> dict[str, str]:
    """Each option's help entry (flag line plus wrapped lines), keyed by its first flag."""
    entries: dict[str, str] = {}
    flag = None
    for line in help_text.split("options:", 1)[1].splitlines():
        if line.strip().startswith("-") and line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip()
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option_with_one_default(command: str) -> None:
    out = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    assert "usage: gankd " + command in out
    # argparse prints each option then its help text; an option with no help has nothing after it
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("-"):
            rest = line.strip().split("  ", 1)
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert len(rest) == 2 or (following and not following.startswith("-")), f"no help for {line.strip()}"
    for flag, entry in option_entries(out).items():
        assert entry.count("default:") <= 1, entry
    if command == "distill":
        assert "(default: mse)" in option_entries(out)["--method"]
    if command == "sample":
        assert "(default: 64)" in option_entries(out)["--n"] and "(default: 0)" in option_entries(out)["--seed"]


def test_help_runs() -> None:
    assert "usage: gankd distill" in run_gankd("distill", "--help").stdout


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
    assert info["parameters"] == 13_487 and info["compression"] == "74:1" and info["compression_ratio"] == pytest.approx(74, abs=0.5)
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


@pytest.mark.parametrize("args, message", [
    (["train", "--seed", "18446744073709551615"], "--seed: must be <= 4294967295 (gankd's limit)"),
    (["train", "--seed", "-1"], "--seed: must be >= 0"),
    (["train", "--latent-dim", "1000000000"], "--latent-dim: must be <= 1024"),
    (["train", "--batch-size", "10000000"], "--batch-size: must be <= 65536"),
    (["distill", "--teacher", "x", "--depth", "4,100000"], "--depth: must be <= 512"),
    (["params", "--depth", "513"], "--depth: must be <= 512"),
    (["sample", "x", "--seed", "18446744073709551616"], "--seed: must be <= 4294967295"),
    (["evaluate", "x", "--seed", "-5"], "--seed: must be >= 0"),
    (["evaluate", "x", "--samples", "1000000000"], "--samples: must be <= 200000"),
    (["sample", "x", "--n", "1000000000"], "--n: must be <= 4096"),
])
def test_limits_are_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def one_line_error(result, code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("gankd: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_config_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"depht": 8}))
    line = one_line_error(run_gankd("train", "--config", str(config), "--out", str(tmp_path / "r"), check=False), code=2)
    assert "'depht'" in line and "did you mean 'depth'" in line


@pytest.mark.parametrize("values, message", [
    ({"depth": "4"}, 'depth must be an integer, got "4"'),
    ({"depth": None}, "depth must be an integer, got null"),
    ({"depth": 4.0}, "depth must be an integer, got 4.0"),
    ({"betas": 5}, "betas must be a list of 2 numbers or null, got 5"),
    ({"betas": [0.5, "0.9"]}, "betas must be a list of 2 numbers"),
    ({"alpha": True}, "alpha must be a number, got true"),
    ({"channels_last": "yes"}, "channels_last must be true or false"),
    ({"dataset": 3}, "dataset must be a string or null, got 3"),
    ({"seed": 2**64 - 1}, "seed must be in 0..4294967295"),
    ({"latent_dim": 10**9}, "latent size must be in 1..1024"),
    ({"depth": 100_000}, "depth must be in 1..512"),
])
def test_config_values_of_the_wrong_type_or_range_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    values: dict, message: str) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps(values))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("gankd: error:") == 1 and f"gankd: error: {config}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_progress_in_a_log_is_plain_lines_and_quiet_is_silent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--depth", "2", "--loss", "dcgan", "--steps", "3", "--log-every", "1"]
    try:
        assert main([*args, "--out", str(tmp_path / "r")]) == 0  # stderr is captured: not a terminal, as a log file
        logged = capsys.readouterr().err
        assert "\r" not in logged and "gan d=2: 3/3 steps (100%)" in logged and "steps/s" in logged
        assert main([*args, "--out", str(tmp_path / "q"), "--quiet"]) == 0
        quiet = capsys.readouterr()
        assert quiet.err == "" and "done:" in quiet.out
        assert main(["--quiet", *args, "--out", str(tmp_path / "q2")]) == 0  # before the command, too
        assert capsys.readouterr().err == ""
    finally:
        set_quiet(False)


def test_line_progress_reports_count_rate_and_eta(capsys: pytest.CaptureFixture) -> None:
    bar = LineProgress(total=10, desc="work", unit="step", interval=0.0)
    bar.update(4)
    bar.set_postfix({"loss": "0.5"})
    bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("work: 4/10 steps (40%), ") and "steps/s, ETA 0:00:0" in lines[0]
    assert lines[1].startswith("work: 5/10 steps (50%)") and lines[1].endswith("loss=0.5")
    assert lines[2].startswith("work: 5/10 steps (50%)") and ", took 0:00:00" in lines[2] and len(lines) == 3


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
    """The README's main job, with few steps: the shipped teacher, three students in one pass,
    their evaluation, the comparison grid and the summary."""
    out = tmp_path / "demo"
    result = run_gankd("demo", "--out", str(out), "--student-steps", "80", "--device", "cpu")
    assert "of the teacher's" in result.stdout and "teacher-fidelity MSE" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["parameters"] == 3_443_585 and 1 <= summary["teacher"]["inception_score"] <= 10
    assert [s["depth"] for s in summary["students"]] == [4, 8, 16]
    assert [s["compression_ratio"] for s in summary["students"]] == [121.9, 55.9, 24.0]
    for s in summary["students"]:
        assert 1 <= s["inception_score"] <= 10 and 0 < s["fidelity_mse"] < 0.9  # an untrained student is at ~1.2
        assert (out / f"d{s['depth']}" / "generator.safetensors").exists()
    with Image.open(out / "teacher_vs_students.png") as image:
        assert image.format == "PNG" and image.width > 4 * 4 * 64


def test_demo_can_train_its_own_teacher(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run_gankd("demo", "--out", str(out), "--train-teacher", "--teacher-steps", "3", "--student-steps", "3", "--device", "cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["path"] == str(out / "teacher" / "generator.safetensors")


def test_a_config_file_names_the_method_unless_a_flag_does(mnist_teacher: Path, tmp_path: Path) -> None:
    """`distill --config` with "method": "joint" trains a joint student (the command's default, mse,
    applies only when neither the file nor a flag names one)."""
    config = tmp_path / "joint.json"
    config.write_text(json.dumps({"method": "joint", "alpha": 0.3, "loss": "dcgan", "teacher": str(mnist_teacher), "depth": 2,
                                  "steps": 2, "log_every": 1}))
    run_gankd("distill", "--config", str(config), "--out", str(tmp_path / "j"))
    saved = json.loads((tmp_path / "j" / "config.json").read_text())
    assert saved["method"] == "joint" and "d_loss" in (tmp_path / "j" / "metrics.csv").read_text().splitlines()[0]
    run_gankd("distill", "--config", str(config), "--method", "mse", "--out", str(tmp_path / "m"))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["method"] == "mse"


def test_limit_merges_a_config_without_a_teacher_with_the_teacher_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit config may leave the teacher to --teacher (and term weights to flags): the options
    are merged before anything checks them."""
    import gankd.experiments.limit

    seen = {}
    monkeypatch.setattr(gankd.experiments.limit, "find_limit", lambda options, *a, **k: seen.update(options) or {"sentence": "ok"})
    config = tmp_path / "limit.json"
    config.write_text('{"method": "mse", "steps": 50, "terms": {"relation": 2}}')
    assert main(["limit", "--config", str(config), "--teacher", "t.safetensors", "--out", str(tmp_path / "l"), "--mmd-weight", "1"]) == 0
    assert seen["teacher"] == "t.safetensors" and seen["steps"] == 50 and seen["terms"] == {"relation": 2, "mmd": 1.0}


@pytest.mark.parametrize("args, message", [
    (["train", "--dep", "2"], "unrecognized arguments: --dep 2; did you mean --depth for --dep?"),  # no abbreviations
    (["distill", "--teacher", "x", "--mse-weigth", "2"], "did you mean --mse-weight for --mse-weigth?"),
    (["--resume", "train"], "did you mean --resume after the command name (gankd train --resume ...)?"),  # before the command
    (["train", "--depth", "0"], "argument --depth: must be >= 1, got 0"),
    (["train", "--image-size", "48"], "invalid choice: 48"),
])
def test_usage_errors_are_one_line_with_a_suggestion_and_a_pointer_to_help(args: list[str], message: str) -> None:
    result = run_gankd(*args, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr  # no usage block
    command = next(a for a in args if not a.startswith("-"))
    assert lines[0].startswith(f"gankd {command}: error: ") and message in lines[0] and lines[0].endswith(f"(see gankd {command} --help)")


@pytest.mark.parametrize("command", ["sample", "info", "evaluate"])
def test_help_names_every_generator_file_kind_a_command_reads(command: str) -> None:
    text = " ".join(run_gankd(command, "--help").stdout.split())
    assert all(kind in text for kind in (".safetensors", "ONNX", "TorchScript")), text
