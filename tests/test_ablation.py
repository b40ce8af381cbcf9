"""`gankd ablation` end to end on real MNIST: variants of distillation terms trained, scored, tabled
and resumed; configs with errors refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from conftest import run_gankd


def tiny(teacher: Path) -> dict:
    return {
        "name": "tiny-ablation",
        "data": {"dataset": "mnist", "image_size": 32},
        "common": {"batch_size": 16, "log_every": 5, "checkpoint_every": 5, "sample_every": 20, "steps": 20},
        "teacher": {"checkpoint": str(teacher)},
        "depths": [2, 4],
        "seeds": [0, 1],
        "variants": {"mse": {}, "mse-continued": {"init": "mse", "steps": 10}, "mse+relation": {"terms": {"relation": 300}}},
        "evaluation": {"metrics": ["fidelity", "cost"], "samples": 200},
    }


def test_ablation_trains_scores_tables_and_resumes(tmp_path: Path, mnist_teacher: Path) -> None:
    config, out = tmp_path / "ablation.json", tmp_path / "out"
    config.write_text(json.dumps(tiny(mnist_teacher)))
    result = run_gankd("ablation", str(config), "--out", str(out), "--jobs", "2")  # two variant-seed jobs at a time
    assert "mse+relation/s1: started (6 of 6; d = 2, 4;" in result.stderr and "mse+relation/s1: done" in result.stderr
    # a warm start runs once the students it starts from are finished, and starts from them
    assert result.stderr.index("mse/s1: done") < result.stderr.index("mse-continued/s1: started")
    warm = json.loads((out / "runs" / "mse-continued" / "s1" / "d4" / "config.json").read_text())
    assert warm["init"] == str(out / "runs" / "mse" / "s1" / "d4" / "generator.safetensors")

    table = json.loads((out / "ablation.json").read_text())
    assert table["unfinished"] == [] and table["columns"] == ["fidelity_mse"]
    rows = {(r["variant"], r["depth"]): r for r in table["rows"]}
    assert set(rows) == {(v, d) for v in ("mse", "mse-continued", "mse+relation") for d in (2, 4)}
    for row in rows.values():
        assert row["seeds"] == 2 and row["steps"] == ([10, 10] if row["variant"] == "mse-continued" else [20, 20])
        assert row["fidelity_mse"]["n"] == 2 and 0 < row["fidelity_mse"]["mean"] < 1 and row["fidelity_mse"]["ci95"] > 0
    assert rows[("mse", 2)]["time_per_step_vs_first"] == 1.0 and rows[("mse+relation", 4)]["time_per_step_vs_first"] > 0
    # the relation term changes the students: same seeds, other weights
    assert rows[("mse", 2)]["fidelity_mse"]["mean"] != rows[("mse+relation", 2)]["fidelity_mse"]["mean"]
    relation_log = (out / "runs" / "mse+relation" / "s0" / "d2" / "metrics.csv").read_text().splitlines()[0]
    assert "relation" in relation_log.split(",")

    markdown = (out / "ablation.md").read_text()
    assert "| mse+relation | 4 |" in markdown and "![ablation](ablation.png)" in markdown and '`{"terms": {"relation": 300}}`' in markdown
    assert Image.open(out / "ablation.png").width > 7 * 64  # teacher + 3 variants x 2 depths

    generator = out / "runs" / "mse" / "s0" / "d2" / "generator.safetensors"
    before = generator.stat().st_mtime_ns
    result = run_gankd("ablation", str(config), "--out", str(out))  # everything finished: nothing retrained, scores cached
    assert "started" not in result.stderr and generator.stat().st_mtime_ns == before
    assert json.loads((out / "ablation.json").read_text()) == table


def test_ablation_config_errors_are_one_line(tmp_path: Path, mnist_teacher: Path) -> None:
    spec = tiny(mnist_teacher)
    for change, message in [({"variants": {"Bad Name": {}}}, "variant name 'Bad Name'"),
                            ({"variants": {"mse": {"terms": {"relatoin": 1}}}}, "did you mean 'relation'"),
                            ({"teacher": {"depth": 8}}, "the teacher is {\"checkpoint\": PATH}"),
                            ({"methods": {}}, "unknown key(s) ['methods']"),
                            ({"variants": {"warm": {"init": "mse"}, "mse": {}}}, "starts from variant 'mse', which must come before it")]:
        config = tmp_path / "bad.json"
        config.write_text(json.dumps({**spec, **change}))
        result = run_gankd("ablation", str(config), "--out", str(tmp_path / "out"), check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and message in lines[0], result.stderr
