"""A sweep's evidence: results.csv/json, a Table-1-style Markdown table, plots, a Figure-11 grid
and report.md tying them together, with the comparisons the paper makes spelled out from the
numbers (does each student beat the regular GAN of its size? where does quality fall off?)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gankd.checkpoint import load_generator  # noqa: E402
from gankd.files import atomic_write_bytes  # noqa: E402
from gankd.imaging import save_comparison  # noqa: E402
from gankd.metrics.registry import column_values, quality_columns  # noqa: E402
from gankd.sampling import images_from  # noqa: E402

if TYPE_CHECKING:
    from gankd.experiments.sweep import Job

# metric column -> (label, higher is better), from the metric registry
QUALITY = quality_columns()
METHOD_LABELS = {"mse": "Stu. (MSE)", "joint": "Stu. (joint)", "regular": "Reg."}
FIGURE_LATENTS, FIGURE_SEED = 12, 11


def result_row(job: "Job") -> dict[str, Any]:
    metrics = job.evaluation.get("metrics", {})
    cost = metrics.get("cost", {})
    meta = load_generator(job.checkpoint)[1] if job.status == "done" else {}
    return {
        "name": job.name, "method": job.method, "depth": job.depth, "status": job.status,
        "parameters": cost.get("parameters", meta.get("parameters")),
        "ratio": cost.get("compression_ratio"),
        **column_values(metrics), "is_std": metrics.get("is", {}).get("std"),
        "fidelity_psnr": metrics.get("fidelity", {}).get("psnr"),
        "multiply_adds": cost.get("multiply_adds"), "checkpoint_bytes": cost.get("checkpoint_bytes"),
        "latency_ms_batch1": cost.get("latency_ms_batch1"), "images_per_s_batch256": cost.get("images_per_s_batch256"),
        "steps": meta.get("step"), "train_time_s": meta.get("elapsed_s"),
        "samples": job.evaluation.get("samples"),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def paper_table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """Laid out like the paper's Table 1: one column per depth, rows Ratio and metric per method."""
    teacher = next(r for r in rows if r["method"] == "teacher")
    depths = sorted({r["depth"] for r in rows if r["method"] != "teacher"})
    by_key = {(r["method"], r["depth"]): r for r in rows}
    lines = [f"| GAN size d | {' | '.join(str(d) for d in depths)} |", "|---|" + "---|" * len(depths)]

    def line(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | {' | '.join(cells)} |")

    def cell(method: str, depth: int, column: str) -> str:
        return _fmt(by_key.get((method, depth), {}).get(column))

    params = {d: next((by_key[(m, d)]["parameters"] for m in METHOD_LABELS if (m, d) in by_key), None) for d in depths}
    line("parameters", [_fmt(params[d]) for d in depths])
    line("Ratio", [f"{teacher['parameters'] / params[d]:.0f}:1" if params[d] and teacher["parameters"] else "—" for d in depths])
    for metric in metrics:
        label = QUALITY[metric][0]
        for method in ("mse", "joint", "regular"):
            if any((method, d) in by_key for d in depths) and not (metric == "fidelity_mse" and method == "regular"):
                line(f"{label} ({METHOD_LABELS[method]})", [cell(method, d, metric) for d in depths])
    header = (f"Teacher: d={teacher['depth']}, {_fmt(teacher['parameters'])} parameters"
              + "".join(f", {QUALITY[m][0]} {_fmt(teacher.get(m))}" for m in metrics if m != "fidelity_mse" and teacher.get(m) is not None))
    return header + "\n\n" + "\n".join(lines) + "\n"


def findings(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The paper's two claims, checked on this sweep's numbers."""
    label, higher = QUALITY[metric]
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
    teacher = next(r for r in rows if r["method"] == "teacher").get(metric)
    by_key = {(r["method"], r["depth"]): r.get(metric) for r in rows}
    depths = sorted({r["depth"] for r in rows if r["method"] != "teacher"}, reverse=True)
    out = []
    for method in ("mse", "joint"):
        verdicts = []
        for d in depths:
            s, g = by_key.get((method, d)), by_key.get(("regular", d))
            if s is not None and g is not None:
                verdicts.append(f"d={d}: {'beats' if better(s, g) else 'does not beat'} the regular GAN ({_fmt(s)} vs {_fmt(g)})")
        if verdicts:
            out.append(f"- {METHOD_LABELS[method]} student, {label}: " + "; ".join(verdicts) + ".")
        if teacher is not None:
            kept = [d for d in depths if by_key.get((method, d)) is not None
                    and (by_key[(method, d)] >= 0.9 * teacher if higher else by_key[(method, d)] <= 1.1 * teacher + 1e-9)]
            lost = [d for d in depths if by_key.get((method, d)) is not None and d not in kept]
            if kept or lost:
                out.append(f"- {METHOD_LABELS[method]} student within 10% of the teacher's {label} ({_fmt(teacher)}) at "
                           f"d = {', '.join(map(str, kept)) or 'none'}; falls off at d = {', '.join(map(str, lost)) or 'none'}.")
    return out


def plot_metric(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    label, higher = QUALITY[metric]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("mse", "joint", "regular"):
        points = sorted((r["ratio"], r[metric]) for r in rows if r["method"] == method and r.get(metric) is not None and r.get("ratio"))
        if points:
            ax.plot(*zip(*points), marker="o", label=METHOD_LABELS[method])
    teacher = next(r for r in rows if r["method"] == "teacher").get(metric)
    if teacher is not None:
        ax.axhline(teacher, color="black", linestyle="--", label="teacher")
    ax.set_xscale("log")
    ticks = sorted({(r["ratio"], r["depth"]) for r in rows if r["method"] != "teacher" and r.get("ratio")})
    ax.set_xticks([t for t, _ in ticks], [f"{t:.0f}:1\nd={d}" for t, d in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("compression ratio (teacher / model parameters)")
    ax.set_ylabel(f"{label} ({'higher' if higher else 'lower'} is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure11(jobs: list["Job"], path: Path) -> None:
    """The same latents through the teacher and the MSE and joint students at each depth."""
    done = {(j.method, j.depth): j for j in jobs if j.status == "done"}
    teacher = next(j for j in jobs if j.method == "teacher")
    if teacher.status != "done":
        return
    order = [teacher] + [done[(m, d)] for m in ("mse", "joint") for d in sorted({j.depth for j in jobs[1:]}, reverse=True) if (m, d) in done]
    panels = []
    latent_dim = load_generator(teacher.checkpoint)[1]["arch"]["latent_dim"]
    for job in order:
        generator, meta = load_generator(job.checkpoint)
        caption = "teacher" if job.method == "teacher" else f"{job.method} d={job.depth}"
        panels.append((caption, images_from(generator, FIGURE_LATENTS, latent_dim, FIGURE_SEED, "cpu")))
    scale = max(1, 64 // meta["arch"]["image_size"])
    save_comparison(panels, path, nrow=2, scale=scale)


def write_report(spec: dict[str, Any], jobs: list["Job"], out: Path, settings: dict[str, Any]) -> None:
    rows = [result_row(j) for j in jobs]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(out / "results.json", (json.dumps(rows, indent=2) + "\n").encode())
    quality = [m for m in QUALITY if any(r.get(m) is not None for r in rows)]
    table = paper_table(rows, quality)
    (out / "table.md").write_text(table)
    plots = []
    for metric in quality:
        plot_metric(rows, metric, out / f"plot_{metric}.png")
        plots.append(f"![{QUALITY[metric][0]} against compression ratio](plot_{metric}.png)")
    figure11(jobs, out / "figure11.png")
    failed = [f"- `{j.name}`: {j.status} — {j.error}" for j in jobs if j.status != "done"]
    report = [
        f"# Sweep `{spec.get('name', out.name)}`", "",
        spec.get("description", ""), "",
        f"Evaluation: {', '.join(settings['metrics'])} on {settings['samples']} samples (seed {settings['seed']}); "
        "the same for every model. Full figures: `results.csv`, `results.json`.", "",
        "## Table (layout of the paper's Table 1)", "", table,
        "## Findings (computed from the numbers above)", "",
        *[line for metric in quality if metric != "fidelity_mse" for line in findings(rows, metric)], "",
        "## Plots", "", *plots, "",
        "## Same latents, teacher and students (cf. the paper's Figure 11)", "",
        "Left to right: teacher, MSE students from largest to smallest d, then joint students.", "",
        "![teacher and students](figure11.png)", "",
    ]
    if failed:
        report += ["## Runs that did not finish (run the sweep again to retry)", "", *failed, ""]
    (out / "report.md").write_text("\n".join(report))
