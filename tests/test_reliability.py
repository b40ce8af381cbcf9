"""Crash safety (a run killed at any moment resumes from an intact checkpoint), run-folder
ownership, failed writes, and TorchScript teachers."""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_gankd
from gankd import checkpoint as ckpt
from gankd.checkpoint import load_generator, read_checkpoint
from gankd.cli import main
from gankd.config import RunConfig
from gankd.errors import GankdError
from gankd.files import LOCK_NAME, atomic_write_bytes, owned_folder
from gankd.sampling import images_from
from gankd.training import train


def test_sigkill_at_random_moments_always_leaves_an_intact_checkpoint(tmp_path: Path) -> None:
    """Checkpoint every step (so many kills land inside a write), kill at random, resume, repeat."""
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.safetensors"
    rng = random.Random(1234)
    args = ["train", "--out", str(out), "--depth", "8", "--loss", "wgan-gp", "--critic-steps", "1", "--steps", "100000",
            "--checkpoint-every", "1", "--log-every", "1", "--sample-every", "100000", "--batch-size", "8", "--resume"]
    steps_seen = []
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "gankd.cli", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = read_checkpoint(last)[1]["step"] if last.exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline and not (last.exists() and read_checkpoint(last)[1]["step"] > before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tensors, meta = read_checkpoint(last)  # never torn: either the old or the new file
        assert meta["step"] > before and "generator.net.0.weight" in tensors
        steps_seen.append(meta["step"])
    assert steps_seen == sorted(steps_seen)
    # leftover temporary files from killed writes are harmless and never read
    final = [str(steps_seen[-1] + 2) if a == "100000" and args[i - 1] == "--steps" else a for i, a in enumerate(args)]
    run_gankd(*final)
    assert read_checkpoint(last)[1]["step"] == steps_seen[-1] + 2


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    original = path.read_bytes()

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(GankdError, match=r"c.safetensors: cannot write \(disk full\); the previous file is unchanged"):
        ckpt.save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    assert path.read_bytes() == original and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("gankd: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# ------------------------------------------------------------------------ TorchScript teachers


def test_torchscript_teachers_distill_like_the_safetensors_teacher(mnist_teacher: Path, tmp_path: Path) -> None:
    """The teacher exported with torch.jit.script (through the CLI) and torch.jit.trace gives the
    student the safetensors teacher gives: the same losses, weights and images up to float rounding
    (gankd runs its own teacher with BatchNorm folded in; the exports run the plain network)."""
    teacher, _ = load_generator(mnist_teacher)
    scripted, traced = tmp_path / "teacher_ts.pt", tmp_path / "teacher_trace.pt"
    torch.jit.script(teacher).save(str(scripted))
    with torch.no_grad():
        torch.jit.trace(teacher, torch.randn(2, 100)).save(str(traced))
    options = dict(method="mse", depth=2, steps=12, batch_size=16, log_every=4, checkpoint_every=12, sample_every=12)
    reference = train(RunConfig(out=str(tmp_path / "from-safetensors"), teacher=str(mnist_teacher), **options))
    from_trace = train(RunConfig(out=str(tmp_path / "from-trace"), teacher=str(traced), **options))
    from_script = tmp_path / "from-script"
    run_gankd("distill", "--teacher", str(scripted), "--out", str(from_script), "--depth", "2", "--steps", "12",
              "--batch-size", "16", "--log-every", "4", "--checkpoint-every", "12", "--sample-every", "12")

    def losses(run: Path) -> list[float]:
        return [float(line.split(",")[4]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]

    students = {run: load_generator(run / "generator.safetensors")[0] for run in (reference, from_trace, from_script)}
    want = students[reference]
    for run in (from_trace, from_script):
        assert losses(run) == pytest.approx(losses(reference), rel=1e-4)
        for name, value in students[run].state_dict().items():
            if name.endswith("weight"):
                assert torch.allclose(value, want.state_dict()[name], atol=1e-5), name
        images, wanted = images_from(students[run], 64, 100, 0, "cpu"), images_from(want, 64, 100, 0, "cpu")
        assert (images - wanted).abs().max() < 0.05 < (wanted - images_from(teacher, 64, 100, 0, "cpu")).abs().mean()


# ------------------------------------------------------------------------ one owner per run folder


def test_a_second_run_or_resume_on_a_held_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """While a process holds the folder, a new run and a --resume each end with one line naming the
    folder and the holder's pid, and write nothing; once it lets go, the run goes ahead."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--depth", "2", "--loss", "dcgan", "--steps", "2", "--log-every", "1"]
    with owned_folder(out):
        result = run_gankd(*args, check=False)  # another process
        assert result.returncode == 75  # EX_TEMPFAIL: try again later (a sweep waits instead of calling it failed)
        lines = [one_error_line(result.stderr)]
        assert main([*args, "--resume"]) == 75  # this process, through another open file: refused as well
        lines.append(one_error_line(capsys.readouterr().err))
        for line in lines:
            assert f"{out}: in use by another gankd run (pid {os.getpid()})" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    assert main(args) == 0
    assert read_checkpoint(out / "checkpoints" / "last.safetensors")[1]["step"] == 2


def test_the_lock_is_per_folder_and_released_on_exit(tmp_path: Path) -> None:
    with owned_folder(tmp_path / "a"):
        with pytest.raises(GankdError, match=rf"{tmp_path / 'a'}: in use by another gankd run \(pid {os.getpid()}\)"):
            with owned_folder(tmp_path / "a"):
                pass
        with owned_folder(tmp_path / "b"):  # another folder: no conflict
            pass
    with owned_folder(tmp_path / "a"):  # released
        pass


def test_torchrun_ranks_stop_together_when_rank_0_cannot_lock(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    with owned_folder(out):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                 "-m", "gankd.cli", "train", "--out", str(out), "--depth", "2", "--loss", "dcgan",
                                 "--steps", "2", "--batch-size", "8", "--device", "cpu"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert f"{out}: in use by another gankd run (pid {os.getpid()})" in result.stderr
    assert "rank 1: rank 0 could not lock" in result.stderr  # rank 1 stopped too, instead of waiting forever
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


# ------------------------------------------------------------------------ failed writes: one line, nothing lost


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The third checkpoint write hits ENOSPC: one line, exit 1, the step-2 checkpoint intact and resumable."""
    out = tmp_path / "run"
    writes = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.safetensors."):
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(["train", "--out", str(out), "--depth", "2", "--loss", "dcgan", "--steps", "5", "--checkpoint-every", "1",
                 "--log-every", "1", "--sample-every", "100"])
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert "last.safetensors: cannot write (No space left on device); the previous file is unchanged" in line
    last = out / "checkpoints" / "last.safetensors"
    assert read_checkpoint(last)[1]["step"] == 2 and not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["train", "--out", str(out), "--steps", "5", "--resume"]) == 0


@pytest.mark.parametrize("case", ["read-only", "out-is-a-file", "sample-out-is-a-folder"])
def test_unwritable_outputs_end_with_one_line(case: str, tmp_path: Path, mnist_teacher: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    if case == "read-only":  # tests may run as root, where file modes stop nothing: refuse at the system calls
        def refuse(*_args, **_kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(os, "mkdir", refuse)
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        runs = [(["train", "--out", str(tmp_path / "ro" / "run"), "--steps", "1"], f"{tmp_path / 'ro' / 'run'}: cannot create"),
                (["sample", str(mnist_teacher), "--out", str(tmp_path / "ro" / "grid.png")], f"{tmp_path / 'ro' / 'grid.png'}: cannot write")]
        problem = "(Read-only file system)"
    elif case == "out-is-a-file":
        runs, problem = [(["train", "--out", str(tmp_path / "a-file"), "--steps", "1"], f"{tmp_path / 'a-file'}: is a file")], ""
    else:
        runs, problem = [(["sample", str(mnist_teacher), "--out", str(tmp_path / "a-folder")], f"{tmp_path / 'a-folder'}: is a folder")], ""
    for args, expected in runs:
        assert main(args) == 1
        line = one_error_line(capsys.readouterr().err)
        assert expected in line and problem in line


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
        RunConfig().save(tmp_path / "config.json")
    finally:
        os.umask(old)
    for name in ("f.json", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
