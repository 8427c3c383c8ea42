"""The DVC pipeline end to end on the embedded synthetic dataset, from a fresh copy of the repository:
`dvc repro` produces the reports, a second `dvc repro` does nothing, and changing one variant's parameter
reruns only that variant's stages and the report."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["baseline", "full", "rga_s"]   # the seed's baseline and method, and RGA: every module the report draws


def sh(*cmd, cwd, check=True, timeout=1800):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PYTHONUNBUFFERED="1")
    p = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}\n{p.stdout[-6000:]}\n{p.stderr[-6000:]}")
    return p


def dvc(*args, cwd, **kw): return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, **kw)


def ran_stages(out: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    "A fresh copy of the repository's files (what a clone holds), with a small CPU profile in params.yaml."
    dst = tmp_path_factory.mktemp("clone") / "reid_nb"
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout.split("\n")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    assert not (dst / "data").exists() and not (dst / "runs").exists()
    for committed in ("reports", "metrics", "manifests"):   # the committed results: the run below must regenerate them
        shutil.rmtree(dst / committed, ignore_errors=True)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["variants"] = VARIANTS
    params["train"].update(input_size=[64, 32], epochs=2, warmup_epochs=1, milestones=[1], P=4, K=2, max_batches=3, num_workers=0)
    params["evaluate"].update(batch_size=64)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=dst)
    sh("git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qam", "clone", "--allow-empty", cwd=dst, check=False)
    sh("git", "add", "-A", cwd=dst)
    sh("git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "fresh clone", cwd=dst)
    return dst


def test_repro_end_to_end(repo):
    p = dvc("repro", cwd=repo)
    stages = ran_stages(p.stdout)
    expected = {"data@synthetic", "report"} | {f"{s}@{v}-synthetic" for s in ("train", "evaluate") for v in VARIANTS}
    assert expected <= stages, (stages, p.stdout[-3000:])
    rep = repo / "reports"
    for f in ("table1.csv", "table1.md", "table2.csv", "table2.md", "cmc.png", "training_curves.png", "retrieval.png",
              "attention.png", "report.ipynb", "report.html"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    # the numbers in the report are those of the metrics files
    t2 = pd.read_csv(rep / "table2.csv")
    for v in VARIANTS:
        m = json.loads((repo / "metrics" / f"{v}-synthetic.json").read_text())
        row = t2[t2.variant == v].iloc[0]
        assert abs(row["mAP"] - 100 * m["mAP"]) < 1e-9 and abs(row["R1"] - 100 * m["rank1"]) < 1e-9
        assert abs(row["rr_mAP"] - 100 * m["rerank"]["mAP"]) < 1e-9
    t1 = pd.read_csv(rep / "table1.csv")
    ours = t1[t1.method.str.startswith("ours")]
    assert len(ours) == 2 and ours.measured_on.str.contains("synthetic").all()   # full and rga_s
    # dvc's own views of the results work
    shown = dvc("metrics", "show", cwd=repo).stdout
    assert "metrics/full-synthetic.json" in shown and "mAP" in shown
    dvc("plots", "show", "-o", str(repo / "plots_html"), cwd=repo)
    assert any((repo / "plots_html").iterdir())


def test_second_repro_does_nothing(repo):
    p = dvc("repro", cwd=repo)
    assert ran_stages(p.stdout) == set(), p.stdout[-3000:]


def test_changing_one_variant_reruns_only_it(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["overrides"]["baseline"]["seed"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = dvc("repro", cwd=repo)
    assert ran_stages(p.stdout) == {"train@baseline-synthetic", "evaluate@baseline-synthetic", "report"}, p.stdout[-3000:]
