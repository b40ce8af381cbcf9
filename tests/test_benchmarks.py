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
