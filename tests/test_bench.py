"""The benchmark scripts run (at a tiny scale, in seconds) and find the fast implementations equal to the classic ones; the
metrics benchmark knows what it cannot run at MSMT17 scale, and writes its page from its JSON."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_metrics", ROOT / "bench" / "bench_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_metrics_tiny(tmp_path):
    js = tmp_path / "tiny.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_metrics.py"), "--scale", "tiny", "--json", str(js)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for line in ("evaluation:", "re-ranking:", "fast vs reference", "features vs reference", "sparse vs dense",
                 "features vs dense", "x the GEMM floor", "one pass", "results equal"):
        assert line in out, out
    assert "DIFFERENT" not in out, out
    rec = json.loads(js.read_text())
    assert rec["ok"] and {r["impl"] for r in rec["tasks"]["rerank"]["rows"]} == {"dense", "sparse", "features", "gemm"}
    page = tmp_path / "page.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_metrics.py"), "--page", str(js), "--out", str(page)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    text = page.read_text()
    assert "## tiny: 60 queries × 300 gallery" in text and "| rerank_features (blocks) |" in text and "× GEMM" in text


def test_bench_metrics_msmt17_sizes():
    "MSMT17's test split, and the memory the classic API would need there: the three matrices are 29.2 GiB."
    bm = bench_module()
    assert bm.scales()["msmt17"][:3] == (11659, 82161, 3060)
    need = bm.needs("msmt17")
    assert round(need["sparse"] / 2 ** 30, 1) == 29.2
    assert need["dense"] > 100 * 2 ** 30 and need["features"] < 2 ** 30
