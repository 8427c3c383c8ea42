"""The benchmark scripts run (at a tiny scale, in seconds) and find the fast implementations equal to the classic ones."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_metrics_tiny():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_metrics.py"), "--scale", "tiny"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for line in ("evaluate_rank:", "re_ranking:", "fast vs loop", "reference vs fast", "sparse vs dense", "results equal"):
        assert line in out, out
    assert "DIFFERENT" not in out, out
