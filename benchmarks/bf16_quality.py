"""Does bf16 training cost students quality? MSE students trained in fp32 and in bf16 (autocast,
``--precision bf16``), same seeds, same teacher, same steps; each evaluated identically.

    python -m benchmarks.bf16_quality [--teacher CKPT] [--depths 4,8,16] [--steps 1500] [--seeds 0,1,2]
                                      [--samples 10000] [--out runs/bf16-quality] [--json OUT]

Per depth it prints the mean +- 95% CI (Student t over seeds) of the Inception Score (gankd's digit
classifier) and the teacher-fidelity MSE in each precision, the same-seed difference bf16 - fp32
(paired: far tighter than either spread), and whether bf16 lies within the seed-to-seed spread of
fp32 (the intervals overlap) or is decidedly worse. The students of one
precision and seed train together in one teacher pass; finished runs are reused, so an
interrupted benchmark resumes. The default is the demo's setting (the committed MNIST teacher,
d = 4, 8, 16, 1,500 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks.measure import machine_description  # noqa: E402  (sets TQDM_DISABLE before torch's import)

import torch  # noqa: E402

from gankd.checkpoint import load_generator  # noqa: E402
from gankd.config import RunConfig  # noqa: E402
from gankd.demo import SHIPPED_TEACHER  # noqa: E402
from gankd.experiments.stats import Estimate, better, estimate  # noqa: E402
from gankd.metrics.evaluate import evaluate  # noqa: E402
from gankd.runtime import check_precision  # noqa: E402
from gankd.training import train_many  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def train_students(teacher: Path, depths: list[int], steps: int, seed: int, precision: str, out: Path) -> list[Path]:
    """The students of one precision and seed, trained together (or reused when finished)."""
    folders = [out / precision / f"s{seed}" / f"d{d}" for d in depths]
    if all((f / "generator.safetensors").is_file() for f in folders):
        return folders
    configs = [RunConfig(out=str(f), method="mse", teacher=str(teacher), depth=d, steps=steps, seed=seed, precision=precision,
                         sample_every=steps, checkpoint_every=500, log_every=100) for f, d in zip(folders, depths)]  # fmt: skip
    return train_many(configs, resume=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bf16_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=SHIPPED_TEACHER)
    parser.add_argument("--depths", default="4,8,16")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("runs/bf16-quality"))
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("bf16_quality.json"), metavar="OUT")
    args = parser.parse_args(argv)
    check_precision("bf16", torch.device("cpu"))  # one line, before any training, where the CPU has no native bf16
    depths, seeds = [int(d) for d in args.depths.split(",")], [int(s) for s in args.seeds.split(",")]
    teacher, teacher_meta = load_generator(args.teacher)
    scores: dict[tuple[str, int], dict[str, list[float]]] = {}
    for seed in seeds:
        for precision in PRECISIONS:
            for folder, depth in zip(train_students(args.teacher, depths, args.steps, seed, precision, args.out), depths):
                student, meta = load_generator(folder / "generator.safetensors")
                metrics = evaluate(student, meta, ["is", "fidelity"], args.samples, "cpu", teacher=teacher)["metrics"]
                cell = scores.setdefault((precision, depth), {"is": [], "fidelity_mse": []})
                cell["is"].append(metrics["is"]["mean"])
                cell["fidelity_mse"].append(metrics["fidelity"]["mse"])
    rows = []
    for depth in depths:
        row: dict = {"depth": depth}
        for column, higher in (("is", True), ("fidelity_mse", False)):
            fp32, bf16 = (estimate(scores[(p, depth)][column]) for p in PRECISIONS)
            verdict = "bf16 worse" if better(fp32, bf16, higher) else "bf16 better" if better(bf16, fp32, higher) else "within the seed spread"
            paired = estimate([b - a for a, b in zip(scores[("fp32", depth)][column], scores[("bf16", depth)][column])])
            row[column] = {"fp32": fp32.__dict__, "bf16": bf16.__dict__, "bf16_minus_fp32": paired.__dict__,
                           "values": {p: scores[(p, depth)][column] for p in PRECISIONS}, "verdict": verdict}  # fmt: skip
        rows.append(row)
    machine = machine_description(torch.device("cpu"))["description"].removesuffix(", float32")
    setting = (f"bf16 vs fp32 MSE students, {machine}; teacher {os.path.relpath(args.teacher)} "
               f"(d={teacher_meta['arch']['depth']}), {args.steps} steps, seeds {seeds}, IS and fidelity on {args.samples:,} samples")
    print(setting)
    print("| d | IS fp32 | IS bf16 | bf16 - fp32, same seed | IS: bf16 is | fidelity MSE fp32 | fidelity MSE bf16 | bf16 - fp32, same seed | fidelity: bf16 is |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [str(row["depth"])]
        for column in ("is", "fidelity_mse"):
            cells += [str(Estimate(**row[column][key])) for key in (*PRECISIONS, "bf16_minus_fp32")] + [row[column]["verdict"]]
        print("| " + " | ".join(cells) + " |")
    args.json.write_text(json.dumps({"command": "python -m benchmarks.bf16_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
                                     "setting": setting, "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
