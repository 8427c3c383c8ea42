"""`python -m reid_nb.bench --preset cpu-tiny` (what CI runs) prints the table: both data paths train at a positive rate, their ratio,
feature extraction, evaluation and re-ranking timings; `--json` holds the same numbers. Speeds are printed, never asserted."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUM = r"([0-9]+(?:\.[0-9]+)?)"


def test_bench_cpu_tiny(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    page = tmp_path / "bench.md"
    p = subprocess.run([sys.executable, "-m", "reid_nb.bench", "--preset", "cpu-tiny", "--json", str(out_json), "--report", str(page),
                        "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert re.search(r"^reid-nb bench: torch \S+, python \S+, device cpu = ", out, re.M), out
    assert "input 64x32; P=4 K=2 (batch 8)" in out and "timed steps 3" in out, out
    assert "note: on a CPU the 'resident' path" in out, out
    rates = {}
    for path in ("resident", "classic"):
        m = re.search(rf"^baseline\s+{path}\s+{NUM}\s+{NUM}\s+-\s+{NUM}\s+(\S+)\s+{NUM} min$", out, re.M)
        assert m, f"no training line for {path}:\n{out}"
        rates[path] = float(m.group(1))
        assert rates[path] > 0 and float(m.group(2)) > 0 and float(m.group(5)) > 0, m.group(0)
        assert m.group(4) == ("0.0" if path == "resident" else "-"), m.group(0)   # host syncs per step: none on the resident path
    m = re.search(rf"^baseline\s+ratio resident/classic: {NUM}x$", out, re.M)
    assert m and float(m.group(1)) > 0, out
    assert abs(float(m.group(1)) - rates["resident"] / rates["classic"]) < 0.02 * float(m.group(1)) + 0.01, (m.group(0), rates)
    assert re.search(rf"^  resident\s+{NUM}$", out, re.M) and re.search(rf"^  classic\s+{NUM}$", out, re.M), out
    assert re.search(rf"^baseline\s+32\s+{NUM}\s+-\s+{NUM} s$", out, re.M), out          # feature extraction
    m = re.search(rf"distance {NUM} ms \+ evaluate_rank {NUM} ms = evaluation {NUM} ms", out)
    assert m and all(float(g) > 0 for g in m.groups()), out
    m = re.search(rf"^  re-ranking {NUM} ms$", out, re.M)
    assert m and float(m.group(1)) > 0, out

    res = json.loads(out_json.read_text())
    assert res["config"]["variants"] == ["baseline"] and res["environment"]["device"] == "cpu"
    assert [(r["variant"], r["path"]) for r in res["training"]] == [("baseline", "resident"), ("baseline", "classic")]
    assert all(r["images_per_s"] > 0 and r["images"] == 3 * 8 and r["peak_mem_mb"] is None for r in res["training"])
    assert [r["host_syncs_per_step"] for r in res["training"]] == [0.0, None]
    assert res["ratios"]["baseline"] > 0
    assert res["eval"]["scale"] == "tiny" and res["eval"]["rerank_ms"] > 0 and res["eval"]["evaluation_ms"] > 0
    assert "it/s" not in p.stderr and "img/s]" not in p.stderr, p.stderr                # --no-progress: no bar, the decode bar included
    text = page.read_text()                                                             # the page, generated from the same result
    assert text.startswith("# Benchmark") and "| baseline | resident |" in text and res["environment"]["device_name"] in text
    again = subprocess.run([sys.executable, "-m", "reid_nb.bench", "--from-json", str(out_json), "--report", str(tmp_path / "again.md")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "again.md").read_text() == text, again.stderr   # rendered again, measured nothing


def test_bench_bad_variant():
    p = subprocess.run([sys.executable, "-m", "reid_nb.bench", "--preset", "cpu-tiny", "--variants", "resnet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "unknown variant 'resnet'; known variants: baseline" in p.stderr, p.stderr
