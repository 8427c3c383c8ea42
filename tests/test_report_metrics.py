"""Metrics by name: the metrics JSON, `load_metrics`' columns, Table 2's columns and their headers all come from one
table, `evaluate.METRICS`. The committed metrics files are what its writer writes, byte for byte; the committed Table 2
is what the tables compute from them; and a new metric is one entry of the table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "metrics").glob("*.json"))


def as_ranking(m: dict) -> dict:
    "A ranking result (`evaluate_blocks`' keys) that holds the numbers of metrics-file mapping `m`."
    cmc = np.full(50, np.nan)
    for k in (1, 5, 10, 20): cmc[k - 1] = m[f"rank{k}"]
    return dict(mAP=m["mAP"], mINP=m["mINP"], cmc=cmc)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_the_writer_writes_the_committed_metrics_byte_for_byte(path, tmp_path):
    from reid_nb.evaluate import METRICS, _metrics, write_metrics
    committed = json.loads(path.read_text())
    model = {m.key: committed[m.key] for m in METRICS if m.model}        # of the trained model: not recomputed here
    metrics = dict(_metrics(as_ranking(committed)), **model, rerank=_metrics(as_ranking(committed["rerank"])))
    write_metrics(tmp_path / path.name, metrics, {})
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def test_the_committed_table2_is_what_the_tables_compute(tmp_path):
    from reid_nb.tables import load_metrics, table2, save_table
    save_table(table2(load_metrics(ROOT / "metrics", profile="cpu")), tmp_path, "table2")
    assert (tmp_path / "table2.csv").read_text() == (ROOT / "reports" / "table2.csv").read_text()


NEW_METRIC = """
import json, sys
from pathlib import Path
import numpy as np
import reid_nb.evaluate as e
e.METRICS += (e.Metric("rank3", e._rank(3), "R3", "R3 (%)", table2=2.5),)          # the one entry
from reid_nb.tables import HEADERS, load_metrics, readable, table2
out = Path(sys.argv[1])
for seed in (0, 1):
    r = dict(mAP=0.5 + seed / 10, mINP=0.25, cmc=np.linspace(0.5, 1.0, 50), num_valid=3)
    metrics = dict(e._metrics(r), params_M=1.0, gflops=0.02, rerank=e._metrics(r))
    info = dict(variant="full", dataset="synthetic", seed=seed, run=f"runs/full-synthetic-s{seed}", input_size=[64, 32])
    e.write_metrics(out / f"full-synthetic-s{seed}.json", metrics, info)
written = json.loads((out / "full-synthetic-s0.json").read_text())
df = load_metrics(out)
t = table2(df)
print(json.dumps(dict(keys=list(written), rerank=list(written["rerank"]), columns=list(t.columns),
                      shown=list(readable(t).columns), r3=float(df.R3.iloc[0]), header=HEADERS["rr_R3"])))
"""


def test_a_new_metric_is_one_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-c", NEW_METRIC, str(tmp_path)], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["keys"] == ["mAP", "mINP", "rank1", "rank5", "rank10", "rank20", "rank3", "params_M", "gflops", "rerank"]
    assert got["rerank"][-1] == "rank3"                                   # re-ranked too: a ranking metric
    cols = got["columns"]
    assert cols.index("R1") < cols.index("R3") < cols.index("R5"), cols    # where its `table2` puts it
    assert "R3 (%)" in got["shown"] and got["header"] == "re-ranked R3 (%)"
    assert got["r3"] == pytest.approx(100 * np.linspace(0.5, 1.0, 50)[2])
