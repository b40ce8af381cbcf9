"""The benchmark entry point runs and writes its JSON (speed targets are read from its output, not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_benchmark_runner_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--repeats", "1", "--only", "generation",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generation, teacher d=64" in result.stdout and "ratio" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 5 and all(row for row in rows)


def test_deployment_benchmark_prints_its_table_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "deploy.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.deploy", "--quick", "--threads", "1", "--depths", "8",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for path in ("pytorch eager", "gankd pytorch", "onnxruntime float32", "onnxruntime int8", "onnxruntime int8 convs"):
        assert f"| student d=8 | 1 | {path} |" in result.stdout
    assert "ONNX Runtime vs PyTorch eager, batch 1" in result.stdout and "target >= 5x" in result.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["bytes"]["onnx int8 convs"] < row["bytes"]["onnx int8"] < row["bytes"]["onnx float32"]
    assert all(t["latency_ms_p50"] > 0 and t["images_per_s"] > 0 for t in row["timings"].values())
