"""A sweep's evidence: per-model results, a Table-1-style table of means with 95% confidence
intervals over seeds, findings that claim only what the intervals support, plots with error bars,
training curves, a Figure-11 grid, the regular-GAN recipe choice, ``summary.json`` and
``report.md`` tying them together."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gankd.checkpoint import load_generator, read_checkpoint  # noqa: E402
from gankd.experiments.jobs import Model, SweepResult, student_methods  # noqa: E402
from gankd.metrics.registry import QUALITY, columns_of, metric_value  # noqa: E402
from gankd.experiments.stats import Estimate, better, estimate, keeps, smallest_kept  # noqa: E402
from gankd.files import atomic_write_bytes  # noqa: E402
from gankd.imaging import save_comparison  # noqa: E402
from gankd.sampling import images_from  # noqa: E402

METHOD_LABELS = {"mse": "Stu. (MSE)", "joint": "Stu. (joint)", "mse-continued": "Stu. (MSE, continued)", "regular": "Reg.", "teacher": "teacher"}
COLORS = {"mse": "tab:blue", "joint": "tab:orange", "mse-continued": "tab:purple", "regular": "tab:green", "teacher": "black"}
VARIANT_COLORS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")  # named student variants, in order
FIGURE_LATENTS, FIGURE_SEED = 12, 11
CHANCE_IS = 1.5  # below this an MNIST generator's IS says little more than "not digits"


def methods(sweep: SweepResult) -> list[str]:
    """The sweep's methods in report order: its students (built-in, then named variants), then regular."""
    return student_methods(sweep.spec) + (["regular"] if "regular" in sweep.spec["methods"] else [])


def label(method: str) -> str:
    return METHOD_LABELS.get(method, f"Stu. ({method})")


def color(sweep: SweepResult, method: str) -> str:
    variants = [m for m in student_methods(sweep.spec) if m not in COLORS]
    return COLORS.get(method) or VARIANT_COLORS[variants.index(method) % len(VARIANT_COLORS)]


def warm_started(sweep: SweepResult) -> list[str]:
    """The student methods that start from the MSE students of their seed (``"init": "mse"``): their
    comparison with those MSE students is also made seed by seed."""
    return [m for m in student_methods(sweep.spec) if any(name.startswith(f"{m}/") for name in sweep.after)]


def distilled(sweep: SweepResult) -> list[str]:
    """The students compared with the regular GANs and drawn in Figure 11 (all but the control)."""
    return [m for m in student_methods(sweep.spec) if m != "mse-continued"]


# --------------------------------------------------------------------------- per model


def last_logged(run_dir: Path, column: str) -> float | None:
    """The last value of ``column`` in a run's metrics.csv (e.g. the critic's final loss)."""
    try:
        with (run_dir / "metrics.csv").open(newline="") as f:
            values = [row[column] for row in csv.DictReader(f) if row.get(column)]
    except OSError:
        return None
    return float(values[-1]) if values else None


def model_row(model: Model, columns: list[str]) -> dict[str, Any]:
    cost = model.evaluation.get("metrics", {}).get("cost", {})
    meta = read_checkpoint(model.checkpoint)[1] if model.status == "done" else {}
    return {
        "method": model.method, "recipe": model.recipe, "seed": model.seed, "depth": model.depth, "status": model.status,
        "parameters": cost.get("parameters", meta.get("parameters")), "ratio": cost.get("compression_ratio"),
        **{c: metric_value(model.evaluation, c) for c in columns},
        "steps": meta.get("step"), "stopped": meta.get("stopped"), "train_time_s": meta.get("elapsed_s"),
        "critic_loss_final": last_logged(model.run_dir, "d_loss"),
        "samples": model.evaluation.get("samples"), "checkpoint": str(model.checkpoint),
    }


# --------------------------------------------------------------------------- aggregation


def cells(sweep: SweepResult, rows: list[dict[str, Any]], columns: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """(method, depth) -> {column: Estimate over seeds, "parameters", "steps", "recipe"}. Regular
    GANs count only with the recipe chosen at that depth."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for method in methods(sweep):
        for depth in sweep.depths:
            chosen = [r for r in rows if r["method"] == method and r["depth"] == depth and r["status"] == "done"
                      and (method != "regular" or r["recipe"] == sweep.choice.get(depth))]
            if not chosen:
                continue
            cell: dict[str, Any] = {"parameters": chosen[0]["parameters"], "recipe": chosen[0]["recipe"],
                                    "steps": estimate([r["steps"] for r in chosen]), "seeds": len(chosen),
                                    "at_cap": sum(r["stopped"] == "steps" for r in chosen)}
            for column in columns:
                values = [r[column] for r in chosen if r[column] is not None]
                if values:
                    cell[column] = estimate(values)
                    cell[f"{column}_by_seed"] = {r["seed"]: r[column] for r in chosen if r[column] is not None}
            out[(method, depth)] = cell
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, Estimate):
        if value.n < 2 or math.isnan(value.ci95):
            return _fmt(value.mean, digits)
        if value.ci95 <= 0:
            return f"{_fmt(value.mean, digits)} ± 0"
        decimals = max(0, 1 - math.floor(math.log10(value.ci95)))  # the interval to 2 significant digits, the mean to match
        return f"{value.mean:,.{decimals}f} ± {value.ci95:,.{decimals}f}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def steps_cell(cell: dict[str, Any]) -> str:
    """Mean steps over seeds, and how many of the seeds ran to the step cap instead of stopping on a
    plateau of their monitor (still improving when stopped: their budget, not convergence, ended them)."""
    at_cap = f" ({cell['at_cap']}/{cell['seeds']} at the cap)" if cell["at_cap"] else ""
    return _fmt(cell["steps"].mean, 3) + at_cap


def paper_table(sweep: SweepResult, teacher: dict[str, Any], agg: dict, columns: list[str]) -> str:
    """Laid out like the paper's Table 1: one column per depth; mean ± 95% CI over seeds."""
    depths = sweep.depths
    lines = [f"| GAN size d | {' | '.join(str(d) for d in depths)} |", "|---|" + "---|" * len(depths)]

    def line(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | {' | '.join(values)} |")

    params = {d: next((agg[(m, d)]["parameters"] for m in methods(sweep) if (m, d) in agg), None) for d in depths}
    line("parameters", [_fmt(params[d]) for d in depths])
    line("Ratio", [f"{teacher['parameters'] / params[d]:.0f}:1" if params[d] and teacher.get("parameters") else "—" for d in depths])
    for column in columns:
        for method in methods(sweep):
            if method == "regular" and column == "fidelity_mse":
                continue
            if any((method, d) in agg for d in depths):
                line(f"{QUALITY[column].label} ({label(method)})", [_fmt(agg.get((method, d), {}).get(column)) for d in depths])
    for method in methods(sweep):
        if any((method, d) in agg for d in depths):
            warm = " after its MSE student's" if any(name.startswith(f"{method}/") for name in sweep.after) else ""
            line(f"steps ({label(method)}{warm})", [steps_cell(agg[(method, d)]) if (method, d) in agg else "—" for d in depths])
    if "regular" in {m for m, _ in agg}:
        line("regular recipe", [sweep.choice.get(d, "—") for d in depths])
    seeds = sorted({agg[k]["seeds"] for k in agg})
    over = ("/".join(map(str, seeds)) + (" seed" if seeds == [1] else " seeds")) if seeds else "the seeds (none finished yet)"
    header = (f"Teacher: d={teacher['depth']}, {_fmt(teacher.get('parameters'))} parameters"
              + "".join(f", {QUALITY[c].label} {_fmt(teacher.get(c))}" for c in columns if c != "fidelity_mse" and teacher.get(c) is not None)
              + f". Cells: mean ± 95% CI (Student t) over {over}; steps: the mean, and how many "
              "seeds ran to their step cap instead of stopping on a plateau of their monitor (k/n at the cap).")
    if sweep.floor:
        header += ("\n\nReal test images in a generator's place, against the same training reference at the same count (the "
                   "best a generator can score here: FID's bias keeps it above 0): "
                   + ", ".join(f"{QUALITY[c].label} {_fmt(v)}" for c, v in sweep.floor.items()) + ".")
    return header + "\n\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- findings


def findings(sweep: SweepResult, teacher: dict[str, Any], agg: dict, column: str, keep: float) -> list[str]:
    """The paper's claims, checked on this sweep's numbers; a claim needs non-overlapping intervals."""
    col = QUALITY[column]
    higher = col.higher_is_better
    depths = sorted(sweep.depths, reverse=True)
    out = []

    def verdict(a: Estimate, b: Estimate) -> str:
        if a.n < 2 or b.n < 2:
            return "undecided (one seed: no interval)"
        if column == "is" and a.high < CHANCE_IS and b.high < CHANCE_IS:
            return "both near chance"
        if better(a, b, higher):
            return "beats"
        if better(b, a, higher):
            return "is worse than"
        return "ties (intervals overlap)"

    def paired(method: str, a: dict[int, float], b: dict[int, float], other: str) -> str:
        """Students warm-started from the MSE student of their seed: the same-seed difference
        removes the spread between seeds that both share."""
        difference = estimate([a[seed] - b[seed] for seed in sorted(set(a) & set(b))])
        if difference.n < 2:
            return ""
        above, below = difference.low > 0, difference.high < 0  # the whole interval on one side of 0
        word = "better" if (above if higher else below) else "worse" if (below if higher else above) else "no different (the interval holds 0)"
        return f"; same seed, {method} − {'MSE' if other == 'mse' else 'continued'} = {_fmt(difference)}: {word}"

    for method in distilled(sweep):
        parts = [f"d={d}: {verdict(agg[(method, d)][column], agg[('regular', d)][column])} ({_fmt(agg[(method, d)][column])} vs "
                 f"{_fmt(agg[('regular', d)][column])})" for d in depths if column in agg.get((method, d), {}) and column in agg.get(("regular", d), {})]
        if parts:
            out.append(f"- {label(method)} against the regular GAN of its size, {col.label}: " + "; ".join(parts) + ".")
    warm = warm_started(sweep)
    for method in (m for m in distilled(sweep) if m != "mse"):
        controls = (("mse", "MSE students"),) + ((("mse-continued", "the same MSE students continued by MSE for the joint students' steps"),)
                                                if method == "joint" else ())
        for other, title in controls:
            parts = [f"d={d}: {verdict(agg[(method, d)][column], agg[(other, d)][column])} ({_fmt(agg[(method, d)][column])} vs "
                     f"{_fmt(agg[(other, d)][column])}"
                     f"{paired(method, agg[(method, d)][f'{column}_by_seed'], agg[(other, d)][f'{column}_by_seed'], other) if method in warm else ''})"
                     for d in depths if column in agg.get((method, d), {}) and column in agg.get((other, d), {})]
            if parts:
                out.append(f"- {label(method)} against {title}, {col.label}: " + "; ".join(parts) + ".")
    reference = teacher.get(column)
    regular = {d: agg[("regular", d)][column] for d in depths if column in agg.get(("regular", d), {})}
    if reference is not None and regular:
        out.append(teacher_finding(reference, regular, col.label, higher))
    if reference is not None:
        bound = f"≥ {keep:.0%} of" if higher else f"≤ 1/{keep:g} ×"
        for method in methods(sweep):
            by_depth = {d: agg[(method, d)][column] for d in depths if column in agg.get((method, d), {})}
            if not by_depth:
                continue
            if all(e.n < 2 for e in by_depth.values()):
                out.append(f"- {label(method)}: one seed so far, no interval: what it keeps of the teacher's {col.label} is undecided.")
                continue
            kept = [d for d in depths if d in by_depth and keeps(by_depth[d], reference, keep, higher)]
            limit = smallest_kept(by_depth, reference, keep, higher)
            ratio = f" ({teacher['parameters'] / agg[(method, limit)]['parameters']:.0f}:1)" if limit is not None else ""
            out.append(f"- {label(method)}: the whole interval keeps {bound} the teacher's {col.label} ({_fmt(reference)}) at "
                       f"d = {', '.join(map(str, kept)) or 'none'}; compression limit (smallest d of the table that keeps it, with "
                       f"every larger d keeping it too): {f'd={limit}' if limit is not None else 'none'}{ratio}.")
    return out


def teacher_finding(reference: float, regular: dict[int, Estimate], name: str, higher: bool) -> str:
    """Whether the teacher (one model) is better than every regular GAN: better than the whole 95%
    interval of each depth's regular GAN, and by how much against the best regular mean."""
    if all(e.n < 2 for e in regular.values()):
        return f"- Teacher ({_fmt(reference)}) against the regular GANs, {name}: one seed so far, no interval: undecided."
    beats = {d: e.n >= 2 and (reference > e.high if higher else reference < e.low) for d, e in regular.items()}
    best_depth = (max if higher else min)(regular, key=lambda d: regular[d].mean)
    best = regular[best_depth]
    beaten = ", ".join(str(d) for d in regular if beats[d])
    if all(beats.values()):
        where = f"better than the whole 95% interval at every depth (d = {beaten}): the teacher beats every regular GAN"
    else:
        others = ", ".join(str(d) for d in regular if not beats[d])
        where = (f"better than the whole 95% interval at d = {beaten or 'none'}, not at d = {others}: "
                 "the teacher is not shown to beat every regular GAN")
    return (f"- Teacher ({_fmt(reference)}) against the regular GANs, {name}: {where}. "
            f"Teacher / best regular mean (d={best_depth}, {_fmt(best)}) = {reference / best.mean:.2f}.")


# --------------------------------------------------------------------------- pictures


def plot_metric(sweep: SweepResult, teacher: dict[str, Any], agg: dict, column: str, path: Path) -> None:
    col = QUALITY[column]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in methods(sweep):
        points = sorted((teacher["parameters"] / agg[(method, d)]["parameters"], agg[(method, d)][column])
                        for d in sweep.depths if column in agg.get((method, d), {}))
        if points:
            ratios, ests = zip(*points)
            errors = [0 if math.isnan(e.ci95) else e.ci95 for e in ests]
            ax.errorbar(ratios, [e.mean for e in ests], yerr=errors, marker="o", capsize=4, label=label(method), color=color(sweep, method))
    if teacher.get(column) is not None:
        ax.axhline(teacher[column], color="black", linestyle="--", label="teacher")
    ax.set_xscale("log")
    ticks = sorted({(teacher["parameters"] / agg[k]["parameters"], k[1]) for k in agg})
    ax.set_xticks([t for t, _ in ticks], [f"{t:.0f}:1\nd={d}" for t, d in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("compression ratio (teacher / model parameters)")
    ax.set_ylabel(f"{col.label} ({'higher' if col.higher_is_better else 'lower'} is better); mean ± 95% CI")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(sweep: SweepResult, models: list[Model], path: Path) -> dict[str, list[str]]:
    """The monitor each model watched (val_* in metrics.csv) against the step: one row of panels
    per monitor (a fidelity MSE near 0.05 and an FID near 100 share no useful axis), one column
    per depth, and the teacher's own column where it watched one. Returns, per monitor drawn,
    the methods that watched it (empty: nothing drawn)."""
    curves: dict[str, list[tuple[Model, list[tuple[int, float]]]]] = {}
    for model in [sweep.teacher.models[0], *models]:
        if model.method == "regular" and model.recipe != sweep.choice.get(model.depth):
            continue
        try:
            with (model.run_dir / "metrics.csv").open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            continue
        column = next((c for c in (rows[0] if rows else {}) if c.startswith("val_")), None)
        points = [(int(r["step"]), float(r[column])) for r in rows if column and r.get(column)]
        if points:
            curves.setdefault(column[4:], []).append((model, points))
    if not curves:
        return {}
    panels = [(depth, False) for depth in sorted(sweep.depths)]
    panels += [(m.depth, True) for m, _ in (pair for drawn in curves.values() for pair in drawn) if m.method == "teacher"][:1]
    fig, axes = plt.subplots(len(curves), len(panels), figsize=(4 * len(panels), 3.2 * len(curves)), squeeze=False)
    for row, monitor in zip(axes, sorted(curves)):
        for ax, (depth, of_teacher) in zip(row, panels):
            for model, points in curves[monitor]:
                if model.depth == depth and (model.method == "teacher") == of_teacher:
                    ax.plot(*zip(*points), color=color(sweep, model.method), alpha=0.8, lw=1,
                            label=label(model.method) if of_teacher or model.seed == sweep.seeds[0] else None)
            ax.set_title(f"{monitor}, {'teacher ' if of_teacher else ''}d={depth}")
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[1]:  # a panel with no curve (no model of that depth finished yet) has no legend
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {monitor: list(dict.fromkeys(label(m.method) for m, _ in drawn)) for monitor, drawn in sorted(curves.items())}


def figure11(sweep: SweepResult, models: list[Model], path: Path) -> bool:
    """The same latents through the teacher and the students of the first seed (MSE, joint, then
    each named variant), from the largest to the smallest depth (cf. the paper's Figure 11)."""
    teacher = sweep.teacher.models[0]
    if teacher.status != "done":
        return False
    shown = distilled(sweep)
    done = {(m.method, m.depth): m for m in models if m.status == "done" and m.seed == sweep.seeds[0] and m.method in shown}
    order = [teacher] + [done[(method, d)] for method in shown for d in sorted(sweep.depths, reverse=True) if (method, d) in done]
    latent_dim = load_generator(teacher.checkpoint)[1]["arch"]["latent_dim"]
    panels = []
    for model in order:
        generator, meta = load_generator(model.checkpoint)
        caption = "teacher" if model.method == "teacher" else f"{model.method} d={model.depth}"
        panels.append((caption, images_from(generator, FIGURE_LATENTS, latent_dim, FIGURE_SEED, "cpu")))
    save_comparison(panels, path, nrow=2, scale=max(1, 64 // meta["arch"]["image_size"]))
    return True


# --------------------------------------------------------------------------- the report


def summary(dataset: str, teacher: dict[str, Any], agg: dict, columns: list[str], primary: str,
            floor: dict[str, float] | None = None) -> dict[str, Any]:
    """The machine-readable result: one row per method x depth x metric, and (``real_test``) what
    real test images score in a generator's place."""
    rows = []
    for (method, depth), cell in sorted(agg.items()):
        for column in columns:
            if column in cell:
                e: Estimate = cell[column]
                rows.append({"method": method, "depth": depth, "params": cell["parameters"],
                             "ratio": teacher["parameters"] / cell["parameters"], "metric": column, "mean": e.mean,
                             "ci95": None if math.isnan(e.ci95) else e.ci95, "seeds": e.n,
                             **({"recipe": cell["recipe"]} if method == "regular" else {})})
    return {"dataset": dataset,
            "teacher": {"params": teacher["parameters"], "metric": primary, "value": teacher.get(primary),
                        "metrics": {c: teacher[c] for c in columns if teacher.get(c) is not None}},
            **({"real_test": floor} if floor else {}),
            "rows": rows}


def recipe_table(sweep: SweepResult, rows: list[dict[str, Any]], primary: str) -> list[str]:
    if len(sweep.recipes) < 2:
        return []
    first = sweep.seeds[0]
    unfinished = [r for r in rows if r["method"] == "regular" and r["seed"] == first and r["status"] != "done"]
    pending = " among the recipes finished so far (a cell marked — is still training)" if unfinished else ""
    lines = [f"| recipe (seed {first}) | " + " | ".join(f"d={d}" for d in sweep.depths) + " |", "|---|" + "---|" * len(sweep.depths)]
    for name in sweep.recipes:
        values = []
        for d in sweep.depths:
            row = next((r for r in rows if r["method"] == "regular" and r["recipe"] == name and r["depth"] == d and r["seed"] == first), None)
            if row is None or row[primary] is None:
                values.append("—")
                continue
            mark = " **(chosen)**" if sweep.choice.get(d) == name else ""
            values.append(f"{_fmt(row[primary])}, critic loss {_fmt(row['critic_loss_final'])}, {row['steps']} steps{mark}")
        lines.append(f"| {name}: `{json.dumps(sweep.recipes[name])}` | " + " | ".join(values) + " |")
    return ["## Regular GANs: recipes tried (first seed), the best one per depth trained at every seed", "",
            f"Chosen by {QUALITY[primary].label} at seed {first}{pending}; the critic loss is the last logged value.", "", *lines, ""]


def write_report(sweep: SweepResult, settings: dict[str, Any]) -> None:
    out = sweep.out
    models = [m for job in sweep.jobs for m in job.models]
    columns = columns_of(settings["metrics"])
    rows = [model_row(m, columns) for m in models]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(out / "results.json", (json.dumps(rows, indent=2) + "\n").encode())
    teacher = next(r for r in rows if r["method"] == "teacher")
    agg = cells(sweep, rows, columns)
    table = paper_table(sweep, teacher, agg, columns)
    (out / "table.md").write_text(table)
    dataset = sweep.spec["data"].get("dataset", "mnist")
    atomic_write_bytes(out / "summary.json", (json.dumps(summary(dataset, teacher, agg, columns, settings["primary"], sweep.floor), indent=2) + "\n").encode())
    plots = []
    for column in columns:
        if any(column in cell for cell in agg.values()):
            plot_metric(sweep, teacher, agg, column, out / f"plot_{column}.png")
            plots.append(f"![{QUALITY[column].label} against compression ratio](plot_{column}.png)")
    curves = plot_curves(sweep, models, out / "curves.png")
    grid = figure11(sweep, models, out / "figure11.png")
    failed = [f"- `{job.name}`: {job.status} — {job.error or 'not trained to the end yet'}" for job in sweep.jobs if job.status != "done"]
    keep = settings["keep"]
    report = [
        f"# Sweep `{sweep.spec.get('name', out.name)}`", "",
        sweep.spec.get("description", ""), "",
        f"Evaluation: {', '.join(settings['metrics'])} on {settings['samples']:,} samples (seed {settings['seed']}), the same for "
        f"every model; seeds {sweep.seeds}. Each model is its final checkpoint (never a best-of). Per-model figures: "
        "`results.csv`, `results.json`; machine-readable summary: `summary.json`.", "",
        "## Table (layout of the paper's Table 1)", "", table,
        "## Findings (computed from the numbers above)", "",
        "A claim needs the 95% intervals not to overlap; \"keeps\" needs the whole interval within the bound.", "",
        *[line for column in columns if column != "fidelity_mse" for line in findings(sweep, teacher, agg, column, keep)], "",
        "## Plots", "", *plots, "",
    ]
    if curves:
        report += ["## Training curves", "", "The held-out quantity each model watched while training (its stopping rule's "
                   "monitor), every seed; the runs stop where the curve flattens. One row per monitor: "
                   + "; ".join(f"{monitor} ({', '.join(methods)})" for monitor, methods in curves.items()) + ".", "",
                   "![training curves](curves.png)", ""]
    if grid:
        report += ["## Same latents, teacher and students (cf. the paper's Figure 11)", "",
                   f"Seed {sweep.seeds[0]}. Left to right: teacher, then the students of "
                   + ", then ".join(label(m) for m in distilled(sweep)) + ", each from the largest to the smallest d.",
                   "", "![teacher and students](figure11.png)", ""]
    report += recipe_table(sweep, rows, settings["primary"])
    if failed:
        report += ["## Jobs that did not finish (run the sweep again to retry)", "", *failed, ""]
    (out / "report.md").write_text("\n".join(report))
