"""Check that gankd's default options train at every image size: the check behind the README's
"Defaults that train" table.

    python scripts/check_defaults.py [--out runs/check-defaults] [--steps 1500] [--cases 32-d16,64-d16,...]

Each case is a GAN trained from scratch on the vendored MNIST with default options except the
image size, depth and loss it names (so the default critic width and optimiser settings are what
is checked), watched by gankd's IS monitor every ``--eval-every`` steps. A case passes when

* quality rises: the last IS is at least 1.5 above the first evaluation's, and above 2.5, and
* the critic does not win outright: its loss over the last interval is above 1e-3 (dcgan; a
  critic that wins drives it to ~1e-5 within a few hundred steps) or, for WGAN-GP, the critic's
  Wasserstein estimate stays finite and below 1e3.

It writes ``OUT/check.json`` (every case's IS curve and critic loss; cases run before and not
now are kept) and exits 1 if a case run now fails.
Runs are ordinary gankd runs under ``OUT/<case>`` and resume if interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch.nn.functional as F

from gankd.checkpoint import load_generator
from gankd.config import RunConfig
from gankd.errors import GankdError, RunInterrupted
from gankd.imaging import save_comparison
from gankd.sampling import images_from
from gankd.training import train

SHEET_SEED = 0

CASES = {  # name -> (image size, depth, loss)
    "32-d16-dcgan": (32, 16, "dcgan"),
    "32-d64-dcgan": (32, 64, "dcgan"),
    "64-d16-dcgan": (64, 16, "dcgan"),
    "64-d64-dcgan": (64, 64, "dcgan"),
    "64-d16-wgan-gp": (64, 16, "wgan-gp"),
    "128-d8-dcgan": (128, 8, "dcgan"),
    "128-d8-wgan-gp": (128, 8, "wgan-gp"),
}


def run_case(out: Path, size: int, depth: int, loss: str, steps: int, eval_every: int) -> dict:
    cfg = RunConfig(out=str(out), dataset="mnist", image_size=size, depth=depth, loss=loss, steps=steps, monitor="is",
                    eval_every=eval_every, log_every=eval_every // 5, sample_every=eval_every, checkpoint_every=eval_every)
    train(cfg, resume=True)
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    curve = [(int(r["step"]), float(r["val_is"])) for r in rows if r.get("val_is")]
    last = rows[-1]
    critic = float(last["d_loss"]) if loss == "dcgan" else float(last["wasserstein"])
    rises = curve[-1][1] >= curve[0][1] + 1.5 and curve[-1][1] > 2.5
    balanced = critic > 1e-3 if loss == "dcgan" else abs(critic) < 1e3
    return {"image_size": size, "depth": depth, "loss": loss, "critic_depth": cfg.resolved_critic_depth, "r1_gamma": cfg.resolved_r1_gamma, "is_curve": curve,
            "critic_final": critic, "critic_measure": "d_loss" if loss == "dcgan" else "wasserstein", "quality_rises": rises,
            "critic_balanced": balanced, "passed": rises and balanced}


def sample_sheet(out: Path, names: list[str]) -> Path:
    """One panel per case: 8 samples of its final generator on the same latents, shown at 64x64."""
    panels = []
    for name in names:
        generator, meta = load_generator(out / name / "generator.safetensors")
        images = images_from(generator, 8, meta["arch"]["latent_dim"], SHEET_SEED, "cpu")
        panels.append((name, F.interpolate(images, size=64, mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)))
    save_comparison(panels, out / "samples.png", nrow=2)
    return out / "samples.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/check-defaults"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    args = parser.parse_args()
    check_file = args.out / "check.json"  # cases run earlier (or by another process) stay in it; the ones run now replace theirs
    results = {}
    for name in args.cases.split(","):
        size, depth, loss = CASES[name]
        results[name] = run_case(args.out / name, size, depth, loss, args.steps, args.eval_every)
        r = results[name]
        print(f"{name}: critic d={r['critic_depth']}, IS {r['is_curve'][0][1]:.2f} -> {r['is_curve'][-1][1]:.2f}, "
              f"{r['critic_measure']} {r['critic_final']:.3g}: {'pass' if r['passed'] else 'FAIL'}", flush=True)
        merged = {**(json.loads(check_file.read_text()) if check_file.exists() else {}), name: r}
        check_file.write_text(json.dumps(merged, indent=2) + "\n")
    finished = [name for name in CASES if (args.out / name / "generator.safetensors").exists()]
    print(f"samples of every finished case: {sample_sheet(args.out, finished)}")
    return 0 if all(results[name]["passed"] for name in args.cases.split(",")) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GankdError as exc:  # e.g. stopped by Ctrl-C after a checkpoint: rerun to resume
        print(f"check_defaults: {exc}", file=sys.stderr)
        sys.exit(130 if isinstance(exc, RunInterrupted) else 1)
