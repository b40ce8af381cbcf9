"""`gankd limit`: the compression limit as a number -- the smallest student depth that keeps a
chosen fraction of the teacher's quality.

Bisection over candidate depths (assumed monotone: a larger student is no worse), each probe
distilling the student at every seed and evaluating it. A depth *keeps* the teacher's quality
when the whole 95% interval over seeds is within the bound (mean - CI >= keep x teacher for IS;
mean + CI <= teacher / keep for FID-like metrics), the rule the sweep report uses. Students go to
``OUT/s<seed>/d<depth>``, the layout of a sweep's ``runs/<method>`` folder: pointing ``--out`` at a
sweep's students reuses every model it already trained (students trained together there are
bit-identical to students trained alone here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gankd.checkpoint import load_generator
from gankd.errors import GankdError
from gankd.experiments.jobs import Model, evaluate_model, make_job, run_job
from gankd.metrics.registry import METRIC_OF, QUALITY, metric_value
from gankd.experiments.stats import Estimate, estimate, keeps
from gankd.files import atomic_write_bytes
from gankd.runtime import resolve_device


@dataclass
class Probe:
    depth: int
    parameters: int
    estimate: Estimate
    kept: bool


def find_limit(options: dict[str, Any], out: Path, depths: list[int], seeds: list[int], metric: str, keep: float,
               samples: int, eval_seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Bisect ``depths`` for the smallest that keeps ``keep`` of the teacher's ``metric``; writes
    ``OUT/limit.json`` and returns it."""
    if metric not in QUALITY or metric == "fidelity_mse":
        raise GankdError(f"--metric must be a quality column: {', '.join(c for c in QUALITY if c != 'fidelity_mse')}")
    if not 0 < keep <= 1:
        raise GankdError(f"--keep must be in (0, 1], got {keep}")
    column = QUALITY[metric]
    evaluated = [METRIC_OF[metric]]
    dev = resolve_device(device)
    teacher_path = Path(options["teacher"])
    _, teacher_meta = load_generator(teacher_path)
    teacher = Model("teacher", teacher_meta["arch"]["depth"] or 0, 0, teacher_path, status="done")
    teacher_value = metric_value(evaluate_model(teacher, evaluated, samples, eval_seed, dev, None), metric)
    depths = sorted(set(depths))
    probes: dict[int, Probe] = {}

    def probe(depth: int) -> Probe:
        if depth in probes:
            return probes[depth]
        values = []
        for seed in seeds:
            job = make_job(f"{options['method']}/s{seed}/d{depth}", options["method"], seed, out / f"s{seed}", [depth], options, source="limit")
            run_job(job, threads=os.cpu_count() or 1)
            model = job.models[0]
            if model.status != "done":
                raise GankdError(f"limit: the d={depth} student of seed {seed} did not train: {model.error} (see {job.folder / 'train.log'})")
            values.append(metric_value(evaluate_model(model, evaluated, samples, eval_seed, dev, None), metric))
        parameters = load_generator(job.models[0].checkpoint)[1]["parameters"]
        est = estimate(values)
        probes[depth] = Probe(depth, parameters, est, keeps(est, teacher_value, keep, column.higher_is_better))
        print(f"  d={depth}: {column.label} {est} over {len(seeds)} seeds -> {'keeps' if probes[depth].kept else 'does not keep'}", flush=True)
        return probes[depth]

    low, high = 0, len(depths) - 1
    if not probe(depths[high]).kept:
        answer = None
    elif probe(depths[low]).kept:
        answer = depths[low]
    else:
        while high - low > 1:  # invariant: depths[low] does not keep, depths[high] does
            middle = (low + high) // 2
            low, high = (low, middle) if probe(depths[middle]).kept else (middle, high)
        answer = depths[high]
    result = {
        "metric": metric, "keep": keep, "teacher": {"path": str(teacher_path), "parameters": teacher_meta["parameters"], "value": teacher_value},
        "seeds": seeds, "samples": samples, "limit": answer,
        "probes": [{"depth": p.depth, "parameters": p.parameters, "ratio": teacher_meta["parameters"] / p.parameters, "mean": p.estimate.mean,
                    "ci95": p.estimate.ci95, "kept": p.kept} for p in sorted(probes.values(), key=lambda p: p.depth)],
    }
    result["sentence"] = sentence(result, column.label, column.higher_is_better)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "limit.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def sentence(result: dict[str, Any], label: str, higher_is_better: bool) -> str:
    """The answer in one line, with its interval and the depth just below it."""
    keep, teacher = result["keep"], result["teacher"]["value"]
    bound = f">= {keep:.0%} of the teacher's {label} ({teacher:.3g})" if higher_is_better else f"<= {1 / keep:.3g} x the teacher's {label} ({teacher:.3g})"
    probes = {p["depth"]: p for p in result["probes"]}

    def show(p: dict[str, Any]) -> str:
        return f"{label} {p['mean']:.3g} ± {p['ci95']:.2g}" if p["ci95"] == p["ci95"] else f"{label} {p['mean']:.3g}"

    if result["limit"] is None:
        largest = probes[max(probes)]
        return f"no depth up to d={largest['depth']} keeps {bound}: d={largest['depth']} gives {show(largest)}"
    best = probes[result["limit"]]
    below = [p for d, p in probes.items() if d < result["limit"] and not p["kept"]]
    tail = f"; d={max(below, key=lambda p: p['depth'])['depth']} does not ({show(max(below, key=lambda p: p['depth']))})" if below else ""
    return (f"smallest student keeping {bound}: d={best['depth']}, {best['ratio']:.0f}:1, {show(best)} "
            f"(95% CI over {len(result['seeds'])} seeds){tail}")
