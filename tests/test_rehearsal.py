"""The paper profile's code path, rehearsed end to end from a fresh copy: archives in the releases' formats (made locally,
declared MD5s), ImageNet weight files in the released key layout (legacy pickles without BatchNorm counters), 256x128 at
width 1, both datasets, `pretrained` — switched to the way the README says (`reid-nb profile rehearsal`, a DVC experiment)
and checked stage by stage: datasets prepared from their archives, weights loaded with the expected new layers per variant,
Table 1 and Table 2 holding our rows for market1501 and dukemtmc, every number in them equal to a metrics file."""
import collections
import hashlib
import json
import re
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import fresh_copy
from test_pipeline import ran_stages, sh

NEW_LAYERS = {   # per variant: the kinds of module that are not in the ImageNet checkpoint (models.ReIDModel.new_modules)
    "baseline": {"ReIDHead": 1},
    "full": {"MHSA": 9, "ModuleDict": 1, "ReIDHead": 1},          # 6 + 3 MHSA in conv4_x/conv5_x, the stage ECA, the head
    "rga_sc": {"ModuleDict": 1, "ReIDHead": 1},                    # the four RGA-SC modules, the head
}
LABELS = {"market1501": "Market-1501", "dukemtmc": "DukeMTMC-reID"}


def cli(*args, cwd):
    return sh(sys.executable, "-m", "reid_nb.cli", *args, cwd=cwd)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    "A fresh copy, the rehearsal's files made, then the pipeline run as the README says; returns (repo, output, seconds)."
    repo = fresh_copy(tmp_path_factory.mktemp("rehearsal") / "reid_nb")
    t0 = time.time()
    made = cli("make-rehearsal", cwd=repo).stdout
    assert made.count("as declared") == 2, made
    out = cli("profile", "rehearsal", cwd=repo)
    seconds = time.time() - t0
    print(f"rehearsal: make-rehearsal + reid-nb profile rehearsal (dvc exp run) took {seconds:.0f} s")
    return repo, out.stdout + out.stderr, seconds


def test_every_stage_ran_with_the_profile(rehearsal):
    repo, out, _ = rehearsal
    doc = yaml.safe_load((repo / "params-rehearsal.yaml").read_text())
    expected = {f"data@{d}" for d in doc["datasets"]} | {"report"} | {
        f"{s}@{v}-{d}-{seed}" for s in ("train", "evaluate") for v in doc["variants"] for d in doc["datasets"] for seed in doc["seeds"]}
    assert expected <= ran_stages(out), (sorted(ran_stages(out)), out[-3000:])
    assert yaml.safe_load((repo / "params.yaml").read_text()) == doc        # the experiment ran with exactly the profile
    shown = json.loads(sh(sys.executable, "-m", "dvc", "exp", "show", "--json", cwd=repo).stdout)
    exps = [e for r in shown for e in (r.get("experiments") or []) if e.get("name") == "rehearsal"]
    assert exps, json.dumps(shown)[:2000]
    params = exps[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["profile"] == "rehearsal" and params["train"]["input_size"] == [256, 128]


def test_datasets_come_from_their_archives(rehearsal):
    repo, _, _ = rehearsal
    doc = yaml.safe_load((repo / "params-rehearsal.yaml").read_text())
    for name, decl in doc["data"]["archives"].items():
        arc = repo / decl["file"]
        assert hashlib.md5(arc.read_bytes()).hexdigest() == decl["md5"]
        with zipfile.ZipFile(arc) as zf:
            jpgs = collections.Counter(n.split("/")[1] for n in zf.namelist() if n.endswith(".jpg") and "/-1_" not in n)
        man = json.loads((repo / "manifests" / f"{name}.json").read_text())
        assert man["sizes"] == {"train": jpgs["bounding_box_train"], "query": jpgs["query"], "gallery": jpgs["bounding_box_test"]}
        source = json.loads((repo / doc["data"]["root"] / name / ".reid_nb_source.json").read_text())
        assert source == {"archive": arc.name, "md5": decl["md5"]}


def test_pretrained_weights_loaded_with_the_expected_new_layers(rehearsal):
    repo, out, _ = rehearsal
    doc = yaml.safe_load((repo / "params-rehearsal.yaml").read_text())
    for v in doc["variants"]:
        for d in doc["datasets"]:
            s = json.loads((repo / "runs" / f"{v}-{d}-s0" / "train_summary.json").read_text())
            backbone = "resnet50" if v.startswith("rga") else "resnet50_ibn_a"
            f = repo / doc["train"]["pretrained"].replace("{backbone}", backbone)
            assert (repo / s["pretrained"]["file"]).resolve() == f.resolve()
            assert s["pretrained"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
            assert s["pretrained"]["filled_counters"] == 53                  # the release layout has no BatchNorm counters
            new = s["new_parameters"]
            assert dict(collections.Counter(new["modules"].values())) == NEW_LAYERS[v], (v, new["modules"])
            assert new["lr_mult"] == 1.0 and new["parameters"] > 0
    assert len(re.findall(r"pretrained: \d+ tensors from .*not in the checkpoint", out)) == len(doc["variants"]) * len(doc["datasets"])


def test_tables_hold_our_rows_for_both_datasets(rehearsal):
    repo, _, seconds = rehearsal
    doc = yaml.safe_load((repo / "params-rehearsal.yaml").read_text())
    t1, t2 = pd.read_csv(repo / "reports" / "table1.csv"), pd.read_csv(repo / "reports" / "table2.csv")
    for d in doc["datasets"]:
        for v in doc["variants"]:
            m = json.loads((repo / "metrics" / f"{v}-{d}-s0.json").read_text())              # the metrics alone
            info = json.loads((repo / "metrics" / "runs" / f"{v}-{d}-s0.json").read_text())  # what made them
            assert info["dataset"] == d and info["variant"] == v and info["input_size"] == [256, 128]
            row = t2[(t2.variant == v) & (t2.dataset == LABELS[d])]
            assert len(row) == 1, (v, d, t2[["variant", "dataset"]])
            row = row.iloc[0]
            for c, key in (("mAP", "mAP"), ("R1", "rank1"), ("R5", "rank5"), ("mINP", "mINP")):
                assert row[c] == pytest.approx(100 * m[key], abs=1e-9), (v, d, c)
            assert row["rr_mAP"] == pytest.approx(100 * m["rerank"]["mAP"], abs=1e-9)
            assert row["profile"] == "rehearsal"
        for v in ("full", "rga_sc"):                                     # Table 1's rows of ours: under the dataset they were measured on
            m = json.loads((repo / "metrics" / f"{v}-{d}-s0.json").read_text())
            row = t1[t1.source.str.endswith(f"{v}-{d}-s0.json")]
            assert len(row) == 1 and row.iloc[0].dataset == LABELS[d] and row.iloc[0].measured.startswith("profile rehearsal")
            assert row.iloc[0]["mAP"] == round(100 * m["mAP"], 1) and row.iloc[0]["R1"] == round(100 * m["rank1"], 1)
        published = t1[(t1.dataset == LABELS[d]) & (t1.measured == "published")]
        assert "FSAFC-Net" in set(published.method)                # beside FSAFC-Net's own published numbers
    print(f"rehearsal pipeline: {seconds:.0f} s")
