"""A user's own dataset through the whole pipeline, and cross-domain evaluation, from a fresh copy of the repository:
a custom dataset given as a CSV list (registered by name in params.yaml `data.custom`, no code) is prepared, trained on and
evaluated by `dvc repro`; with `eval_datasets` every run is also tested on the other dataset, and the report gains a
cross-domain table whose diagonal equals the in-domain results."""
import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import fresh_copy, run_cli
from test_pipeline import dvc, ran_stages

SPLIT_DIRS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}


def write_custom_list(src: Path, dst: Path) -> dict:
    """A custom dataset in the list layout at `dst`: the images of the Market-layout folder `src` under `dst/images/`, and
    `dst/mine.csv` with rows (path, pid, camid, split) whose identities and cameras are strings (`person0002`, `cam3`), as a
    user's own annotation might name them. Junk and distractors (pid -1, 0) are left out. Returns images per split (and the training identities)."""
    rows, counts = [], {}
    for sub, split in SPLIT_DIRS.items():
        for p in sorted((src / sub).glob("*.png")):
            pid, cam = int(p.name.split("_")[0]), int(p.name.split("_")[1][1])
            if pid <= 0: continue
            rel = Path("images") / split / p.name
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / rel)
            rows.append(dict(path=rel.as_posix(), pid=f"person{pid:04d}", camid=f"cam{cam}", split=split))
            counts[split] = counts.get(split, 0) + 1
            if split == "train": counts.setdefault("train_ids", set()).add(pid)
    with open(dst / "mine.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "pid", "camid", "split"])
        w.writeheader(); w.writerows(rows)
    return counts


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    "A fresh copy with two datasets (the synthetic set and a custom list dataset), each run also tested on the other; `dvc repro`."
    repo = fresh_copy(tmp_path_factory.mktemp("cross") / "reid_nb")
    gen = tmp_path_factory.mktemp("gen") / "other"
    run_cli("synth", "--root", gen, "--seed", "1")                   # another synthetic world stands in for a user's photos
    counts = write_custom_list(gen, repo / "data" / "mine")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(datasets=["synthetic", "mine"], eval_datasets=["synthetic", "mine"], variants=["baseline"], seeds=[0])
    params["data"]["custom"] = {"mine": {"list": "mine.csv"}}
    params["train"].update(input_size=[64, 32], epochs=2, warmup_epochs=1, milestones=[1], P=4, K=2, max_batches=3, num_workers=0)
    params["evaluate"].update(batch_size=64)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = dvc("repro", cwd=repo, timeout=3600)
    return repo, p.stdout + p.stderr, counts


def test_custom_dataset_trained_and_evaluated_by_dvc_repro(pipeline):
    repo, out, counts = pipeline
    expected = {"data@mine", "train@baseline-mine-0", "evaluate@baseline-mine-0"}
    assert expected <= ran_stages(out), (sorted(ran_stages(out)), out[-3000:])
    manifest = json.loads((repo / "manifests" / "mine.json").read_text())
    assert manifest["dataset"] == "mine", manifest.keys()
    config = json.loads((repo / "runs" / "baseline-mine-s0" / "config.json").read_text())
    assert (config["dataset"], config["num_classes"]) == ("mine", len(counts["train_ids"])), config["num_classes"]
    info = json.loads((repo / "metrics" / "runs" / "baseline-mine-s0.json").read_text())
    assert (info["dataset"], info["num_query"], info["num_gallery"]) == ("mine", counts["query"], counts["gallery"]), info
    m = json.loads((repo / "metrics" / "baseline-mine-s0.json").read_text())
    assert 0 < m["mAP"] <= 1 and 0 <= m["rank1"] <= 1, m
    assert dvc("status", "dvc.yaml", cwd=repo).stdout.strip().endswith("up to date."), "a second repro would run something"


def test_cross_domain_table_in_the_report(pipeline):
    repo, out, _ = pipeline
    cross = {f"crosseval@baseline-{d}-0-{t}" for d in ("synthetic", "mine") for t in ("synthetic", "mine")}
    assert cross <= ran_stages(out), sorted(ran_stages(out))
    t = pd.read_csv(repo / "reports" / "cross_domain.csv")
    pairs = set(zip(t.trained_on, t.tested_on))
    assert pairs == {(a, b) for a in ("synthetic (embedded)", "mine") for b in ("synthetic (embedded)", "mine")}, pairs
    for tr, te in pairs:                                                    # the diagonal equals the in-domain evaluation
        if tr != te: continue
        run = "baseline-synthetic-s0" if tr.startswith("synthetic") else "baseline-mine-s0"
        row = t[(t.trained_on == tr) & (t.tested_on == te)].iloc[0]
        assert row.in_domain == "yes" and abs(row.mAP - 100 * json.loads((repo / "metrics" / f"{run}.json").read_text())["mAP"]) < 1e-9
    off = t[t.in_domain == "no"]
    assert len(off) == 2 and off.mAP.between(0, 100).all() and off.mAP.nunique() == 2, off
    info = json.loads((repo / "metrics" / "cross" / "runs" / "baseline-synthetic-s0-on-mine.json").read_text())
    assert info["dataset"] == "mine" and info["run"].endswith("baseline-synthetic-s0"), info
    assert (repo / "runs" / "baseline-synthetic-s0" / "eval_summary-mine.json").is_file()   # the in-domain summary is kept
    md = (repo / "reports" / "cross_domain.md").read_text()
    assert md.startswith("**Cross-domain.**") and md.count("\n| baseline |") == 4, md
    assert "Cross-domain evaluation" in (repo / "reports" / "report.html").read_text()


def test_eval_datasets_outside_datasets_is_refused(pipeline):
    "A dataset under eval_datasets without a data stage: one clear line, before DVC runs anything."
    repo, _, _ = pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval_datasets"] = ["synthetic", "market1501"]
    (repo / "params-x.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = run_cli("report", "--params", repo / "params-x.yaml", "--out", repo / "x", cwd=repo, check=False)
    assert p.returncode == 2 and "eval_datasets 'market1501' not under datasets" in p.stderr, p.stderr
    assert not (repo / "x").exists()
