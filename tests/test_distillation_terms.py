"""The distillation terms (gankd/losses.py): each is zero when student and teacher coincide, the
gradient reaches the student alone, a new term is one registry entry, and the teacher's critic is
refused in one line when it does not fit the student."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_gankd
from gankd import losses
from gankd.checkpoint import load_critic, read_checkpoint
from gankd.cli import main
from gankd.config import RunConfig
from gankd.losses import DISTILLATION_TERMS, GeneratorObjective, TermInputs, distillation_term, mmd
from gankd.models import Architecture, BlockTap, Critic, Generator
from gankd.members import load_critic_init
from gankd.training import train


def identity_projections(generator: Generator) -> nn.ModuleList:
    convs = nn.ModuleList([nn.Conv2d(w, w, 1) for w in generator.block_widths])
    for conv, width in zip(convs, generator.block_widths):
        with torch.no_grad():
            conv.weight.copy_(torch.eye(width).view(width, width, 1, 1))
            conv.bias.zero_()
    return convs


def test_every_term_is_zero_when_student_and_teacher_coincide() -> None:
    torch.manual_seed(0)
    teacher = Generator(Architecture(depth=4, image_size=32, channels=1, latent_dim=16)).eval()
    student = copy.deepcopy(teacher)
    critic = Critic(Architecture(depth=4, image_size=32, channels=1), batch_norm=True).eval()
    t_tap, s_tap = BlockTap(teacher), BlockTap(student)
    z = torch.randn(16, 16)
    with torch.no_grad():
        target = teacher(z)
    images = student(z)
    inputs = TermInputs(images.detach().requires_grad_(True), target, s_tap.take(), t_tap.take(), identity_projections(student),
                        critic.features)
    assert len(inputs.blocks) == len(student.block_widths) == 3
    for name, term in DISTILLATION_TERMS.items():
        value, logged = term.value(inputs)
        assert float(value.detach()) == pytest.approx(0.0, abs=1e-6), name
        assert logged, name
    # and not zero once they differ
    inputs.images = (images + 0.1 * torch.randn_like(images)).detach().requires_grad_(True)
    for name in ("mse", "perceptual", "relation", "mmd"):
        assert float(DISTILLATION_TERMS[name].value(inputs)[0].detach()) > 1e-6, name


def test_mmd_is_zero_for_the_same_set_in_another_order_and_positive_for_another_set() -> None:
    torch.manual_seed(1)
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    assert float(mmd(x, x[torch.randperm(10)])) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd(x, torch.zeros_like(x))) > 0.01


def test_the_gradient_reaches_the_student_and_its_projections_only() -> None:
    torch.manual_seed(0)
    teacher = Generator(Architecture(depth=8, image_size=32, channels=1, latent_dim=16)).eval().requires_grad_(False)
    student = Generator(Architecture(depth=2, image_size=32, channels=1, latent_dim=16))
    critic = Critic(Architecture(depth=4, image_size=32, channels=1), batch_norm=True)  # the one being trained (joint)
    teacher_critic = Critic(Architecture(depth=4, image_size=32, channels=1), batch_norm=True).eval().requires_grad_(False)
    projections = nn.ModuleList([nn.Conv2d(s, t, 1) for s, t in zip(student.block_widths, teacher.block_widths)])
    t_tap, s_tap = BlockTap(teacher), BlockTap(student)
    objective = GeneratorObjective("dcgan", (("mse", 1.0), ("feature", 1.0), ("perceptual", 1.0), ("relation", 1.0), ("mmd", 1.0)), 0.3)
    assert objective.needs == {"blocks", "critic"}
    z = torch.randn(8, 16)
    with torch.no_grad():
        target = teacher(z)
    fake = student(z)
    inputs = TermInputs(fake, target, s_tap.take(), t_tap.take(), projections, teacher_critic.features)
    grad, block_loss, stats = objective.images_gradient(fake, target, critic, inputs)
    assert block_loss is not None and {"mse", "feature", "perceptual", "relation", "mmd", "g_adv", "g_loss"} <= set(stats)
    torch.autograd.backward([fake, block_loss], [grad, None])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in projections.parameters())
    for network in (teacher, critic, teacher_critic):
        assert all(p.grad is None for p in network.parameters())


def test_a_new_term_is_one_registry_entry(tmp_path: Path, mnist_teacher: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """A term defined here, in one place (the registry entry), reaches the help, the config and the log."""
    monkeypatch.setattr(losses, "DISTILLATION_TERMS", dict(DISTILLATION_TERMS))  # the registry as it was, after the test
    import gankd.config

    monkeypatch.setattr(gankd.config, "DISTILLATION_TERMS", losses.DISTILLATION_TERMS)

    @distillation_term("brightness", "match the mean brightness of the teacher's images (a test term)")
    def _brightness(t: TermInputs):
        value = (t.images.mean() - t.target.mean()).pow(2)
        return value, {"brightness": value.detach()}

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    assert "--brightness-weight W" in capsys.readouterr().out
    run = train(RunConfig(out=str(tmp_path / "s"), method="mse", teacher=str(mnist_teacher), depth=2, steps=4, log_every=2,
                          terms={"brightness": 0.5}))
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "brightness" in header and "mse" in header
    assert RunConfig.load(run / "config.json").terms == {"mse": 1.0, "brightness": 0.5}


def test_distill_help_lists_every_term_with_its_flag() -> None:
    text = run_gankd("distill", "--help").stdout
    for name in DISTILLATION_TERMS:
        assert f"--{name}-weight" in text


def test_terms_reach_the_run_from_flags_and_from_a_config_file(tmp_path: Path, mnist_teacher: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text('{"terms": {"relation": 2}, "steps": 3, "log_every": 3}')
    run_gankd("distill", "--teacher", str(mnist_teacher), "--config", str(config), "--mmd-weight", "0.5", "--depth", "2",
              "--out", str(tmp_path / "s"))
    assert RunConfig.load(tmp_path / "s" / "config.json").terms == {"mse": 1.0, "relation": 2, "mmd": 0.5}
    config.write_text('{"terms": {"relaton": 1}}')
    result = run_gankd("distill", "--teacher", str(mnist_teacher), "--config", str(config), "--out", str(tmp_path / "t"), check=False)
    assert result.returncode == 2 and "did you mean 'relation'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_teachers_critic_starts_a_joint_critic_and_a_critic_that_does_not_fit_is_refused_in_one_line(
        tmp_path: Path, mnist_teacher: Path) -> None:
    critic_file = mnist_teacher.parent / "critic.safetensors"
    saved, _ = load_critic(critic_file)
    cfg = RunConfig(method="joint", alpha=0.5, loss="dcgan", teacher=str(mnist_teacher), critic_init=str(critic_file), depth=2,
                    critic_depth=saved.arch.depth, image_size=32, channels=1, latent_dim=100)
    critic = Critic(saved.arch, batch_norm=True)
    load_critic_init(critic, cfg)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(critic.state_dict()[name], tensor), name
    base = ["distill", "--teacher", str(mnist_teacher), "--method", "joint", "--alpha", "0.5", "--depth", "2", "--steps", "2"]
    cases = [(["--loss", "dcgan", "--critic-init", str(critic_file), "--critic-depth", "4"], f"pass --critic-depth {saved.arch.depth} --loss dcgan"),
             (["--loss", "wgan-gp", "--critic-init", str(critic_file), "--critic-depth", str(saved.arch.depth)], "cannot start this run's"),
             (["--loss", "dcgan", "--teacher-critic", str(mnist_teacher), "--perceptual-weight", "1"], "not a critic file")]
    for index, (extra, message) in enumerate(cases):
        result = run_gankd(*base, *extra, "--out", str(tmp_path / f"r{index}"), check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_frozen_teacher_critic_judges_the_student_and_never_changes(tmp_path: Path, mnist_teacher: Path) -> None:
    critic_file = mnist_teacher.parent / "critic.safetensors"
    saved, _ = load_critic(critic_file)
    base = ["distill", "--teacher", str(mnist_teacher), "--method", "joint", "--alpha", "0.5", "--loss", "dcgan", "--depth", "2",
            "--steps", "4", "--log-every", "2", "--checkpoint-every", "2"]
    # no --critic-depth: the critic takes the file's depth (the d=2 student's own default would not fit it)
    run_gankd(*base, "--critic-init", str(critic_file), "--critic-steps", "0", "--out", str(tmp_path / "frozen"))
    tensors, _ = read_checkpoint(tmp_path / "frozen" / "checkpoints" / "last.safetensors")
    for name, tensor in saved.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensors[f"critic.{name}"], tensor), name
    rows = list(csv.DictReader(open(tmp_path / "frozen" / "metrics.csv")))
    assert [r["step"] for r in rows] == ["2", "4"] and all(float(r["g_adv"]) > 0 for r in rows)  # the critic judged every step
    refused = run_gankd(*base, "--critic-steps", "0", "--out", str(tmp_path / "fresh"), check=False)
    assert refused.returncode == 2 and "0 freezes a critic started by --critic-init" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_mse_then_joint_trains_mse_students_then_joint_ones_from_them_with_the_teachers_critic_and_resumes_by_phase(
        tmp_path: Path, mnist_teacher: Path) -> None:
    out = tmp_path / "kd"
    command = ["distill", "--teacher", str(mnist_teacher), "--method", "mse-then-joint", "--depth", "2,4", "--steps", "4",
               "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "4", "--eval-every", "2", "--monitor", "fidelity",
               "--out", str(out)]
    first = run_gankd(*command)
    for depth in (2, 4):
        mse = RunConfig.load(out / "mse-phase" / f"d{depth}" / "config.json")
        joint = RunConfig.load(out / f"d{depth}" / "config.json")
        assert (mse.method, mse.ema_kimg, mse.patience, mse.alpha, mse.critic_init) == ("mse", 10.0, 4, 0.0, None)
        assert (joint.method, joint.alpha, joint.loss, joint.ema_kimg) == ("joint", 0.8, "dcgan", 10.0)
        assert joint.critic_init == str(mnist_teacher.parent / "critic.safetensors")
        assert joint.init == str(out / "mse-phase" / f"d{depth}" / "generator.safetensors")
        rows = list(csv.DictReader(open(out / f"d{depth}" / "metrics.csv")))
        assert rows and all(float(r["g_adv"]) > 0 for r in rows)  # the critic took part in the joint phase
    assert "mse phase done" in first.stdout and "joint phase done" in first.stdout
    # the same command again: both phases are finished with the same options, nothing is trained
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("generator.safetensors")}
    again = run_gankd(*command)
    assert again.stdout.count("finished already") == 2 and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # another option in the same folder is refused in one line instead of reusing the MSE students
    other = run_gankd(*command, "--ema-kimg", "5", check=False)
    assert other.returncode != 0 and "holds a run with other options (ema_kimg" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1, other.stderr


def test_mse_then_joint_without_a_critic_beside_the_teacher_trains_a_fresh_one_and_says_so(tmp_path: Path, mnist_teacher: Path) -> None:
    alone = tmp_path / "teacher" / "generator.safetensors"
    alone.parent.mkdir()
    alone.write_bytes(mnist_teacher.read_bytes())
    result = run_gankd("distill", "--teacher", str(alone), "--method", "mse-then-joint", "--depth", "2", "--steps", "2",
                       "--log-every", "1", "--eval-every", "1", "--monitor", "fidelity", "--out", str(tmp_path / "kd"))
    assert "no critic.safetensors beside the teacher: the joint phase trains a fresh critic" in result.stderr
    joint = RunConfig.load(tmp_path / "kd" / "config.json")
    assert (joint.method, joint.critic_init, joint.init) == ("joint", None, str(tmp_path / "kd" / "mse-phase" / "generator.safetensors"))
