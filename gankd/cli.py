"""The ``gankd`` command line. Each subcommand is a thin shell around the Python API.

Errors a user can fix (:class:`~gankd.errors.GankdError`, and an ``OSError`` from the system:
disk full, read-only, no permission) print one line and exit 1; usage errors (argparse, and
config values of the wrong type or out of range) exit 2; a run folder another gankd process holds
exits 75 (EX_TEMPFAIL); an interrupted run exits 130 after saving its checkpoint.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from gankd.config import (BALANCES, CHANNELS, CRITIC_OPTIONS, DEFAULT_IMAGE_SIZE, DEFAULT_LATENT_DIM, DISTILL_METHODS, IMAGE_SIZES, LOSSES,
                          MAX_BATCH_SIZE, MAX_DEPTH, MAX_LATENT_DIM, MAX_SEED, MONITORS, MSE_REDUCTIONS, MSE_THEN_JOINT, PRECISIONS,
                          RECIPE_PHASES, RunConfig, bounded_int, read_options)
from gankd.data import DATASETS
from gankd.errors import EXIT_BUSY, EXIT_INTERRUPTED, EXIT_USAGE, FolderBusy, GankdError, RunInterrupted, UsageError
from gankd.progress import set_quiet
from gankd.schedule import LR_SCHEDULES


MAX_GRID_IMAGES = 4096  # gankd sample: one PNG grid, held in memory


class GankdParser(argparse.ArgumentParser):
    """argparse with gankd's errors: no abbreviated options (``--dep 2`` is not ``--depth 2``), and
    a usage error is one line -- with a suggestion for a misspelt option and a pointer to --help --
    instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def unknown_options(self, extras: list[str]) -> NoReturn:
        """Arguments no option of this command takes: named, each with the closest option."""
        known = [name for action in self._actions for name in action.option_strings]
        hints = [f"{arg} after the command name ({self.prog} {arg} ...)" if close[0] == arg.split("=")[0] else f"{close[0]} for {arg}"
                 for arg in extras if arg.startswith("-") and (close := difflib.get_close_matches(arg.split("=")[0], known, n=1))]
        self.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; did you mean {', '.join(hints)}?" if hints else ""))


class _OneDefaultFormatter(argparse.HelpFormatter):
    """Shows an option's default once: from its help text when that mentions one, else from argparse."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        shown = not unset and action.option_strings and not action.required
        return text if "default" in text or not shown else f"{text} (default: %(default)s)"


def _float_in(low: float, high: float | None = None, open_low: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (open_low and value == low) or (high is not None and value > high):
            bounds = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {value}")
        return value

    return parse


def _depths(text: str) -> list[int]:
    """``4`` or a comma-separated list ``2,4,8,16`` (students distilled together)."""
    parse = bounded_int(1, MAX_DEPTH)
    depths = [parse(part) for part in text.split(",") if part.strip()]
    if not depths:
        raise argparse.ArgumentTypeError("expected a depth or a comma-separated list of depths")
    if len(set(depths)) != len(depths):
        raise argparse.ArgumentTypeError(f"depths repeat: {text}")
    return depths


# Options shared by `train` and `distill`: (RunConfig field, argparse kwargs, help); the flag is the field's name.
RUN_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("out", {}, "run folder: config.json, metrics.csv, samples/, checkpoints/, generator.safetensors"),
    ("dataset", {"choices": DATASETS}, "training data format (default: a student's teacher's, else mnist)"),
    ("data", {}, "dataset root folder (default for mnist: the MNIST shipped in data/mnist; "
                 "for fashion-mnist: $GANKD_DATA/fashion-mnist, $GANKD_DATA defaulting to data/)"),
    ("image_size", {"type": int, "choices": IMAGE_SIZES}, "image size S (default: the teacher's; for a GAN on a folder or CelebA the largest size its images fill; else 32)"),
    ("channels", {"type": int, "choices": CHANNELS}, "image channels (default: the teacher's, else the data's)"),
    ("depth", {"type": bounded_int(1, MAX_DEPTH)}, "generator depth d (channels of the last hidden layer)"),
    ("critic_depth", {"type": bounded_int(1, MAX_DEPTH)}, "critic depth (default: the generator's depth; with the dcgan loss "
                                                            "at most 32, 16, 8 at 32, 64, 128 pixels, so that the critic does not win outright)"),
    ("init", {}, "start from the weights of this gankd generator of the same architecture (fine-tuning, e.g. a joint "
                 "student from an MSE one; with several depths, {depth} in the path stands for each one's); a run resumed "
                 "from its checkpoint ignores it"),
    ("critic_init", {}, "start the critic from this critic.safetensors, e.g. the teacher's (a finished GAN run writes one); "
                        "its depth and loss must be the run's"),
    ("latent_dim", {"type": bounded_int(1, MAX_LATENT_DIM)}, "latent size (default: the teacher's, else 100)"),
    ("loss", {"choices": LOSSES}, "adversarial loss: wgan-gp (lambda 10, 5 critic steps, Adam 1e-4 (0.5, 0.9)) "
                                  "or dcgan (non-saturating, 1 critic step, Adam 2e-4 (0.5, 0.999))"),
    ("gp_lambda", {"type": _float_in(0)}, "WGAN-GP gradient-penalty weight"),
    ("r1_gamma", {"type": _float_in(0)}, "dcgan: R1 penalty weight gamma on the critic's slope at real images (default 0 at 32 and 64 pixels, "
                                          "1 at 128, where a dcgan critic otherwise wins outright; 0 = off)"),
    ("steps", {"type": bounded_int(0)}, "total generator steps"),
    ("batch_size", {"type": bounded_int(1, MAX_BATCH_SIZE)}, "batch size per process"),
    ("lr", {"type": _float_in(0, open_low=True)}, "Adam learning rate (default: the loss's)"),
    ("lr_schedule", {"choices": LR_SCHEDULES}, "learning rate over the steps: constant, or cosine decay from --lr to 5%% of it "
                                                "at --steps (the cap); every optimiser of the run, a function of the step (resume is exact)"),
    ("betas", {"type": _float_in(0, 0.999999), "nargs": 2, "metavar": ("B1", "B2")}, "Adam betas (default: the loss's)"),
    ("critic_steps", {"type": bounded_int(0)}, "critic steps per generator step (default: the loss's; 0 with --critic-init "
                                                 "keeps that critic frozen, a fixed judge)"),
    ("ema_kimg", {"type": _float_in(0)}, "keep an exponential moving average of the generator's weights with this "
                                          "half-life in thousands of images (stylegan2-ada's G_ema; 10 is its default), and "
                                          "deliver, monitor and sample the average; 0 = none"),
    ("seed", {"type": bounded_int(0, MAX_SEED)}, "random seed (weights, latents, data order)"),
    ("device", {}, "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"),
    ("log_every", {"type": bounded_int(1)}, "steps between rows of metrics.csv"),
    ("sample_every", {"type": bounded_int(1)}, "steps between sample grids"),
    ("checkpoint_every", {"type": bounded_int(1)}, "steps between checkpoints (the most a crash can lose)"),
    ("divergence_threshold", {"type": _float_in(0, open_low=True)}, "stop when |critic output| exceeds this"),
    ("patience", {"type": bounded_int(1)}, "stop once this many evaluations in a row bring no gain in the monitor "
                                             "(--steps is then a cap); default: run all --steps"),
    ("eval_every", {"type": bounded_int(1)}, "steps between monitor evaluations (a val_<monitor> column in metrics.csv)"),
    ("monitor", {"choices": MONITORS}, "what convergence is judged on: fidelity (students: MSE to the teacher on held-out "
                                       "latents), is (MNIST GANs), fid (other GANs: 1,000 samples on Inception), none; auto picks"),
    ("min_delta", {"type": _float_in(0)}, "relative gain in the monitor that counts as progress"),
    ("precision", {"choices": PRECISIONS}, "fp32, or bf16 autocast (GPUs, and CPUs with AVX512-BF16 or AMX)"),
    ("channels_last", {"action": "store_const", "const": True}, "channels-last memory format on CUDA (always used on the CPU)"),
    ("compile", {"action": "store_const", "const": True}, "torch.compile the networks"),
]
DISTILL_CHOICES = (*DISTILL_METHODS, MSE_THEN_JOINT)  # gankd distill --method: one run, or the two-phase recipe
DISTILL_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("teacher", {}, "teacher: a gankd checkpoint, or your own generator as an ONNX file (recommended: loading runs no "
                    "code) or a TorchScript file (code you trust), mapping (N, latent) to (N, C, S, S) images in [-1, 1]"),
    ("method", {"choices": DISTILL_CHOICES}, "mse: the distillation terms alone (pixel MSE by default), no data; joint: "
                                             "those plus an adversarial term from a critic trained on real data (its options: alpha, balance); "
                                             f"{MSE_THEN_JOINT}: the best recipe measured (README): MSE students to their plateau in "
                                             "OUT/mse-phase, then joint students from them in OUT with the teacher's critic (critic.safetensors "
                                             "beside the teacher) fine-tuned, alpha 0.8, a 10 kimg weight average, the FID monitor; "
                                             "flags override both phases, critic options the joint phase only"),
    ("teacher_critic", {}, "the teacher's critic.safetensors (in its run folder), for the perceptual term"),
    ("alpha", {"type": _float_in(0, 1)}, "joint: the adversarial term's weight in [0, 1]; 0 is pure MSE, 1 pure adversarial"),
    ("balance", {"choices": BALANCES}, "joint: gradient = alpha is the critic's share of the pull on the images "
                                       "(scale-free); none = the paper's formula, (1 - alpha) MSE + alpha adv"),
    ("mse_reduction", {"choices": MSE_REDUCTIONS}, "sum: squared L2 norm over pixels, as in the paper; mean: per pixel"),
]


def _add_run_options(parser: argparse.ArgumentParser, options: list[tuple[str, dict[str, Any], str]],
                     overrides: dict[str, tuple[dict[str, Any], Any]]) -> None:
    """One flag per RunConfig field; its default is shown once, from RunConfig (or ``overrides``:
    field -> (argparse kwargs, shown default))."""
    defaults = {f.name: f.default for f in fields(RunConfig)}
    for name, kwargs, text in options:
        kwargs, default = overrides.get(name, (kwargs, defaults[name]))
        shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=text + shown, **kwargs)


def _add_term_options(parser: argparse.ArgumentParser) -> None:
    """One ``--<term>-weight`` flag per registered distillation term (gankd/losses.py)."""
    from gankd.losses import DEFAULT_TERMS, DISTILLATION_TERMS

    group = parser.add_argument_group("distillation terms", "the student minimises the weighted sum of these (0 = off); in a "
                                      "config file: \"terms\": {\"name\": weight}")
    for term in DISTILLATION_TERMS.values():
        default = DEFAULT_TERMS.get(term.name, 0)
        group.add_argument(f"--{term.name}-weight", dest=f"{TERM_FLAG}{term.name}", type=_float_in(0), default=None, metavar="W",
                           help=f"{term.help} (default: {default:g})")


TERM_FLAG = "term_weight:"  # argparse dest prefix of the distillation terms' weights


def term_flags(args: argparse.Namespace) -> dict[str, float]:
    """The distillation terms' weights given as flags: term name -> weight."""
    return {k[len(TERM_FLAG):]: v for k, v in vars(args).items() if k.startswith(TERM_FLAG) and v is not None}


def _run_parser(sub: argparse._SubParsersAction, name: str, text: str, distill: bool) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text)
    parser.add_argument("--config", type=Path, help="JSON file of run options (keys as in config.json); flags override it")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    if distill:
        _add_run_options(parser, DISTILL_OPTIONS, {"method": ({"choices": DISTILL_CHOICES}, "mse")})
        _add_term_options(parser)
    together = "one teacher pass" if distill else "one process, sharing the real batches"
    _add_run_options(parser, RUN_OPTIONS, {
        "depth": ({"type": _depths, "metavar": "D[,D...]"}, f"64; several, comma-separated, train together in {together}"),
        "out": ({}, "runs/default; with several depths, each model goes to OUT/d<depth>"),
    })
    return parser


def config_from_args(args: argparse.Namespace, method: str | None, defaults: dict[str, Any] | None = None) -> tuple[RunConfig, bool]:
    """Build the run config: saved config (resume) or ``defaults``, the --config file over them, then flags on top."""
    names = {f.name for f in fields(RunConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    terms = term_flags(args)
    if args.resume:
        if "out" not in flags:
            raise GankdError("--resume needs --out, the run folder to continue")
        saved_path = Path(flags["out"]) / "config.json"
        if saved_path.exists():
            saved = RunConfig.load(saved_path)
            changed = {k: v for k, v in flags.items()
                       if k not in ("out", "steps", "device") and getattr(saved, k) != (tuple(v) if k == "betas" else v)}
            changed.update({f"{name}_weight": w for name, w in terms.items() if saved.terms.get(name, 0) != w})
            if changed:
                raise GankdError(f"--resume continues the saved run; these options differ from {saved_path}: {sorted(changed)}")
            data = saved.to_dict()
            data.update({k: flags[k] for k in ("steps", "device") if k in flags})
            data["out"] = flags["out"]  # the folder resumed, even where the saved config names another (a copied or moved run)
            return RunConfig.from_dict(data, str(saved_path)), True
    base = {**(defaults or {}), **(read_options(args.config) if args.config else {})}
    if method is not None:
        base.setdefault("method", method)  # the command's own method, unless the file or a flag names one
    base.update(flags)
    if terms:
        base["terms"] = {**base.get("terms", {}), **terms}
    return RunConfig.from_dict(base, str(args.config) if args.config else None), args.resume


def configs_from_args(args: argparse.Namespace, method: str, defaults: dict[str, Any] | None = None) -> tuple[list[RunConfig], bool]:
    """One run config per depth of ``--depth D[,D...]``; with several, each student's folder is OUT/d<depth>."""
    depths = args.depth or [None]
    if len(depths) > 1 and args.out is None:
        raise GankdError("several depths need --out, the folder that gets one run folder d<depth> each")
    configs = []
    for depth in depths:
        own = {"depth": depth, "out": f"{args.out}/d{depth}" if len(depths) > 1 else args.out}
        if getattr(args, "init", None):  # "{depth}" in --init stands for each student's own depth
            own["init"] = args.init.replace("{depth}", str(depth))
        cfg, resume = config_from_args(argparse.Namespace(**{**vars(args), **own}), method, defaults)
        if cfg.init and "{depth}" in cfg.init:  # the same, from a --config file
            cfg.init = cfg.init.replace("{depth}", str(cfg.depth))
        configs.append((cfg, resume))
    return [cfg for cfg, _ in configs], configs[0][1]


def cmd_train(args: argparse.Namespace) -> int:
    from gankd.training import train_many

    cfgs, resume = configs_from_args(args, "gan")
    if any(cfg.method != "gan" for cfg in cfgs):
        raise GankdError("gankd train trains a GAN from scratch; use gankd distill for students")
    for run_dir in train_many(cfgs, resume=resume):
        print(f"done: {run_dir}/generator.safetensors, samples in {run_dir}/samples.png")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from gankd.training import train_many

    if args.method == MSE_THEN_JOINT:
        return distill_mse_then_joint(args)
    cfgs, resume = configs_from_args(args, "mse")
    if any(cfg.method not in DISTILL_METHODS for cfg in cfgs):
        raise GankdError("gankd distill needs --method mse or joint")
    for run_dir in train_many(cfgs, resume=resume):
        print(f"done: {run_dir}/generator.safetensors, teacher vs student in {run_dir}/samples.png")
    return 0


def distill_mse_then_joint(args: argparse.Namespace) -> int:
    """The two phases of ``--method mse-then-joint`` (config.RECIPE_PHASES), each skipped once finished
    with the same options, so that the same command (with --resume after a stop) continues where it was."""
    from gankd.checkpoint import read_checkpoint
    from gankd.experiments.jobs import Model, model_finished
    from gankd.training import train_many

    if args.out is None:
        raise GankdError(f"--method {MSE_THEN_JOINT} needs --out: the MSE students go to OUT/mse-phase, the joint students to OUT")
    if args.init is not None:
        raise GankdError(f"--method {MSE_THEN_JOINT} starts its joint phase from its own MSE students; --init is for --method joint")
    several = bool(args.depth) and len(args.depth) > 1
    phase1 = f"{args.out}/mse-phase"
    joint_flags: dict[str, Any] = {"method": "joint", "init": f"{phase1}/d{{depth}}/generator.safetensors" if several else f"{phase1}/generator.safetensors"}
    critic = Path(args.teacher).with_name("critic.safetensors") if args.teacher else None
    if args.critic_init is None and critic is not None and critic.exists():
        joint_flags["critic_init"] = str(critic)
        if args.loss is None:  # the teacher's critic continues under its own loss
            joint_flags["loss"] = read_checkpoint(critic)[1].get("loss", RECIPE_PHASES["joint"]["loss"])
    elif args.critic_init is None:
        print("note: no critic.safetensors beside the teacher: the joint phase trains a fresh critic", file=sys.stderr)
    phases = [("mse", {"method": "mse", "out": phase1, **{name: None for name in CRITIC_OPTIONS}}), ("joint", joint_flags)]
    for phase, flags in phases:
        cfgs, resume = configs_from_args(argparse.Namespace(**{**vars(args), **flags}), phase, RECIPE_PHASES[phase])
        done = [model_finished(Model(phase, cfg.depth, cfg.seed, Path(cfg.out) / "generator.safetensors"), cfg) for cfg in cfgs]
        if all(done):
            print(f"{phase} phase: finished already in {', '.join(cfg.out for cfg in cfgs)}")
            continue
        for run_dir in train_many(cfgs, resume=resume):
            print(f"{phase} phase done: {run_dir}/generator.safetensors, teacher vs student in {run_dir}/samples.png")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from gankd.checkpoint import load_generator
    from gankd.imaging import save_grid
    from gankd.runtime import resolve_device
    from gankd.sampling import images_from

    device = resolve_device(args.device)
    generator, meta = load_generator(args.checkpoint, device)
    images = images_from(generator, args.n, meta["arch"]["latent_dim"], args.seed, device)
    save_grid(images, args.out, scale=max(1, 64 // meta["arch"]["image_size"]))
    print(f"wrote {args.n} samples (seed {args.seed}) to {args.out}")
    return 0


def describe_checkpoint(path: str) -> dict[str, Any]:
    """What `gankd info` prints: architecture, size, cost and compression against the teacher."""
    from gankd.checkpoint import load_critic, load_generator, read_checkpoint
    from gankd.metrics.cost import generator_multiply_adds

    if Path(path).suffix == ".safetensors" and read_checkpoint(path)[1].get("kind") == "critic":
        critic, meta = load_critic(path)
        return {"file": path, "file_bytes": Path(path).stat().st_size, "format": "gankd critic", "architecture": meta["critic_arch"],
                "batch_norm": meta["batch_norm"], "parameters": meta["parameters"], "step": meta.get("step"),
                "loss": meta.get("loss"), "dataset": meta.get("dataset")}
    generator, meta = load_generator(path)
    arch = meta["arch"]
    info = {
        "file": path,
        "file_bytes": Path(path).stat().st_size,
        "format": meta.get("format"),
        "method": meta.get("method") or meta.get("format"),
        "architecture": arch,
        "parameters": meta["parameters"],
        "multiply_adds_per_image": generator_multiply_adds(generator, meta),
        "step": meta.get("step"),
        "loss": meta.get("loss"),
        "dataset": meta.get("dataset"),
    }
    teacher = meta.get("teacher")
    if teacher:
        info["teacher"] = teacher["path"]
        info["teacher_parameters"] = teacher["parameters"]
        info["compression_ratio"] = teacher["parameters"] / meta["parameters"]  # a number, as in gankd evaluate's cost
        info["compression"] = f"{info['compression_ratio']:.0f}:1"
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        elif isinstance(value, float):
            value = f"{value:,.1f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from gankd.models import generator_parameters

    print(generator_parameters(args.depth, args.image_size, args.channels, args.latent_dim))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gankd.demo import run_demo

    run_demo(Path(args.out), device=args.device, student_steps=args.student_steps, train_teacher=args.train_teacher,
             teacher_steps=args.teacher_steps)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gankd.experiments.sweep import run_sweep

    jobs = run_sweep(args.config, args.out, parallel=args.jobs, train=not args.report_only, threads=args.threads).jobs
    unfinished = [j for j in jobs if j.status != "done"]
    print(f"report: {args.out / 'report.md'} ({len(jobs) - len(unfinished)} of {len(jobs)} jobs finished)")
    for job in unfinished:
        print(f"  {job.name}: {job.status}: {job.error or 'not trained to the end yet'}", file=sys.stderr)
    return 1 if any(j.status in ("failed", "skipped") for j in unfinished) or (unfinished and not args.report_only) else 0


def cmd_ablation(args: argparse.Namespace) -> int:
    from gankd.experiments.ablation import run_ablation

    table = run_ablation(args.config, args.out, train=not args.report_only, threads=args.threads, parallel=args.jobs)
    print(f"table: {args.out / 'ablation.md'} ({len(table['unfinished'])} job(s) not finished)")
    return 1 if table["unfinished"] and not args.report_only else 0


def cmd_limit(args: argparse.Namespace) -> int:
    from gankd.experiments.limit import find_limit

    names = {f.name for f in fields(RunConfig)}
    options = read_options(args.config) if args.config else {}  # the keys it sets; validated with the flags, by each job
    options.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if term_flags(args):
        options["terms"] = {**options.get("terms", {}), **term_flags(args)}
    options.setdefault("method", "mse")
    for key in ("out", "depth", "seed"):
        options.pop(key, None)
    if not options.get("teacher"):
        raise GankdError("gankd limit needs --teacher")
    result = find_limit(options, args.out, args.depths, list(range(args.seeds)), args.metric, args.keep, args.samples,
                        device=options.get("device", "auto"))
    print(result["sentence"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gankd.metrics.evaluate import run

    return run(args)


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from gankd.export import bench_exported, export_generator, format_export, format_timings

    result = export_generator(args.checkpoint, args.out, int8=args.int8, int8_convs=args.int8_convs, opset=args.opset,
                              check_samples=args.check_samples)
    print(format_export(result))
    if args.bench:
        print(format_timings(bench_exported(args.checkpoint, result), torch.get_num_threads()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = GankdParser(prog="gankd", description="Compress GAN generators by knowledge distillation.")
    parser.add_argument("--quiet", action="store_true", dest="quiet_before_command", help=argparse.SUPPRESS)  # gankd --quiet CMD
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _run_parser(sub, "train", "train a GAN from scratch (a teacher, or a regular baseline of a student's size)", distill=False).set_defaults(func=cmd_train)
    _run_parser(sub, "distill", "distill a small student generator from a teacher", distill=True).set_defaults(func=cmd_distill)

    p = sub.add_parser("sample", help="write a PNG grid of samples from a generator")
    p.add_argument("checkpoint", help="generator: a gankd checkpoint (.safetensors), an ONNX file or a TorchScript file (TorchScript is code: only files you trust)")
    p.add_argument("--n", type=bounded_int(1, MAX_GRID_IMAGES), default=64, help="number of images")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="latent seed: same seed, same images")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="output PNG")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="architecture, parameters, cost and compression ratio of a checkpoint")
    p.add_argument("checkpoint", help="a gankd generator or critic checkpoint (.safetensors), an ONNX file or a TorchScript file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("params", help="parameter count of a generator")
    p.add_argument("--depth", type=bounded_int(1, MAX_DEPTH), required=True, help="generator depth d")
    p.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=DEFAULT_IMAGE_SIZE, help="image size S")
    p.add_argument("--channels", type=int, choices=CHANNELS, default=1, help="image channels")
    p.add_argument("--latent-dim", type=bounded_int(1, MAX_LATENT_DIM), default=DEFAULT_LATENT_DIM, help="latent size")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("demo", help="the embedded example: distill d=4, 8, 16 students from the shipped MNIST teacher, evaluate, compare")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--student-steps", type=bounded_int(1), default=None, help="distillation steps (default: 1500)")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher here first (about an hour on 2 CPU cores) "
                                                                   "instead of using the committed one")
    p.add_argument("--teacher-steps", type=bounded_int(1), default=None, help="with --train-teacher: its steps (default: 6000)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="reproduce Table 1 for one dataset: teacher, MSE/joint students, regular GANs, metrics, report")
    p.add_argument("config", type=Path, help="sweep config (JSON), e.g. configs/mnist.json")
    p.add_argument("--out", type=Path, required=True, help="output folder (runs/, results.csv, report.md, ...)")
    p.add_argument("--jobs", type=bounded_int(1), default=1, help="independent runs trained in parallel processes")
    p.add_argument("--threads", type=bounded_int(1), help="CPU threads per run (default: the cores shared by --jobs); "
                                                             "lower it when other work shares the machine, as oversubscribed "
                                                             "OpenMP threads slow every process many times over")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: evaluate the finished models and write the report, listing the rest as not finished")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ablation", help="which distillation recipe to ship: students of one teacher by named variants, one table",
                       description="Distil students of one teacher by each named variant of run options (terms, joint "
                                   "settings, ...) at a few depths and seeds, score them alike, and write one table with "
                                   "95%% intervals, relative step time and a picture. Running it again resumes.")
    p.add_argument("config", type=Path, help="ablation config (JSON), e.g. configs/fashion-mnist-ablation.json")
    p.add_argument("--out", type=Path, required=True, help="output folder (runs/, ablation.md, ablation.json, ablation.png)")
    p.add_argument("--threads", type=bounded_int(1), default=1, help="CPU threads of each training process")
    p.add_argument("--jobs", type=bounded_int(1), default=1, help="variant-seed jobs trained in parallel processes")
    p.add_argument("--report-only", action="store_true", help="train nothing: score the finished students and write the table")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("limit", help="the compression limit: the smallest student depth keeping a fraction of the teacher's quality",
                       description="Bisection over student depths, each distilled at every seed and evaluated, for the "
                                   "smallest one whose 95% interval keeps a fraction of the teacher's quality.")
    p.add_argument("--out", type=Path, required=True, help="students go to OUT/s<seed>/d<depth> (a sweep's runs/<method> folder is reused)")
    p.add_argument("--config", type=Path, help="JSON file of distillation options (keys as in config.json); flags override it")
    p.add_argument("--depths", type=_depths, default=list(range(1, 17)), metavar="D,D,...", help="candidate depths (default: 1 to 16)")
    p.add_argument("--seeds", type=bounded_int(2), default=3, help="seeds per depth, 0..N-1 (default: 3)")
    p.add_argument("--metric", default="is", help="quality metric: is, fid, kid or cfid (default: is)")
    p.add_argument("--keep", type=_float_in(0, 1, open_low=True), default=0.9, help="fraction of the teacher's quality to keep (default: 0.9)")
    p.add_argument("--samples", type=bounded_int(10), default=10_000, help="evaluation samples per model (default: 10000)")
    _add_run_options(p, DISTILL_OPTIONS, {"method": ({"choices": DISTILL_METHODS}, "mse")})
    _add_term_options(p)
    _add_run_options(p, [o for o in RUN_OPTIONS if o[0] not in ("out", "depth", "seed")], {})
    p.set_defaults(func=cmd_limit)

    p = sub.add_parser("evaluate", help="quality and cost metrics of a generator (IS, FID, KID, fidelity, cost)")
    from gankd.metrics.evaluate import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    from gankd.export import DEFAULT_OPSET, INT8_QUALITY, OPSETS, QUALITY_SAMPLES

    p = sub.add_parser("export", help="a generator as an ONNX file (float32 or int8) for ONNX Runtime, checked against PyTorch")
    p.add_argument("checkpoint", metavar="CKPT", help="gankd checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation of the first layer (most of a student's weights), "
                                                       "calibrated on latents (QDQ): a 2-3x smaller student, as fast as float32; "
                                                       "checked for quality and timed against float32")
    p.add_argument("--int8-convs", action="store_true", help="int8 for the hidden layers too (as sub-pixel convolutions): the smallest "
                                                             "file, but slower than float32 at batch 1 for small students on a CPU")
    p.add_argument("--check-samples", type=bounded_int(10), default=QUALITY_SAMPLES, metavar="N",
                   help=f"latents of the int8 quality check: PSNR >= {INT8_QUALITY.psnr_db:g} dB to float32, and the IS "
                        f"(MNIST digit generators, within {INT8_QUALITY.is_change * 100:g}%%) or the FID to float32's images "
                        f"(others, Inception; at most {INT8_QUALITY.fid:g})")
    p.add_argument("--opset", type=int, choices=OPSETS, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default: {DEFAULT_OPSET})")
    p.add_argument("--bench", action="store_true", help="then time PyTorch eager, gankd's PyTorch path and ONNX Runtime "
                                                        "(batch-1 latency, batch-64 throughput; OMP_NUM_THREADS threads)")
    p.set_defaults(func=cmd_export)

    for command in sub.choices.values():
        command.formatter_class = _OneDefaultFormatter
        command.add_argument("--quiet", action="store_true", help="no progress output (errors and results still print)")
    parser.commands = sub.choices  # name -> its parser, for errors about its options
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.commands[args.command].unknown_options(extras)
    set_quiet(args.quiet or args.quiet_before_command)
    try:
        return args.func(args)
    except GankdError as exc:
        print(f"gankd: error: {exc}", file=sys.stderr)
        codes = {UsageError: EXIT_USAGE, FolderBusy: EXIT_BUSY, RunInterrupted: EXIT_INTERRUPTED}
        return next((code for kind, code in codes.items() if isinstance(exc, kind)), 1)
    except OSError as exc:  # the system refused (disk full, read-only, no permission): the file and why
        print(f"gankd: error: {exc.filename or 'I/O'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gankd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
