"""A variant declared in a params file, without code: `variant_defs: {full_se: {base: full, channel_attn: se}}` trains through
`reid-nb train --params P --variant full_se`, evaluates, and appears in Table 2 under its label; `reid-nb deps` writes its
deps/variants links; a bad definition is a one-line error."""
import json
import shutil
from pathlib import Path

import yaml

from conftest import ROOT, run_cli

LABEL = "Baseline + SAM + FF + SE"


def write_params(tmp_path: Path, data_root: Path, defs: dict, variants=("baseline", "full_se")) -> Path:
    "A copy of params.yaml with the variants `defs` declares, tiny training settings, and `data_root`."
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc.update(variant_defs=defs, variants=list(variants), seeds=[0], overrides={v: {} for v in variants})
    doc["data"]["root"] = str(data_root)
    doc["train"].update(epochs=1, max_batches=2, P=4, K=2, num_workers=0, warmup_epochs=0, milestones=[1])
    doc["evaluate"].update(batch_size=64)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_declared_variant_trains_evaluates_and_is_reported(data_root, tmp_path):
    params = write_params(tmp_path, data_root, {"full_se": {"base": "full", "channel_attn": "se", "label": LABEL}})
    out = run_cli("variants", "--params", params).stdout
    assert f"full_se    {LABEL} — full with channel_attn=se" in out, out
    run = tmp_path / "runs" / "full_se-synthetic-s0"
    run_cli("train", "--params", params, "--variant", "full_se", "--dataset", "synthetic", "--seed", "0", "--out", run, "--no-progress")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["variant"] == "full_se" and cfg["model_config"]["channel_attn"] == "se" and cfg["model_config"]["mhsa"] == ["conv4", "conv5"]
    metrics = tmp_path / "metrics" / "full_se-synthetic-s0.json"
    run_cli("evaluate", "--params", params, "--run", run, "--metrics", metrics, "--no-progress")
    # Table 2, as the report computes it, in a process that read the same params file
    code = ("import sys; from reid_nb.cli import read_params; from reid_nb.report import load_metrics, table2; "
            f"read_params({str(params)!r}); t = table2(load_metrics({str(metrics.parent)!r})); "
            "print(t[['variant', 'model']].to_json(orient='records'))")
    import subprocess, sys, os
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [{"variant": "full_se", "model": LABEL}], p.stdout


def test_deps_writes_and_checks_the_links(data_root, tmp_path):
    repo = tmp_path / "repo"
    (repo / "deps").mkdir(parents=True)
    shutil.copytree(ROOT / "deps" / "variants", repo / "deps" / "variants", symlinks=True)
    params = write_params(repo, data_root, {"full_se": {"base": "full", "channel_attn": "se"}})
    p = run_cli("deps", "--params", params, "--check", cwd=repo, check=False,
                env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "full_se: +backbone.py +eca.py +fusion.py +head.py +mhsa.py +models.py" in p.stderr, p.stderr
    run_cli("deps", "--params", params, cwd=repo, env={"PYTHONPATH": str(ROOT)})
    links = sorted(f.name for f in (repo / "deps" / "variants" / "full_se").iterdir())
    assert links == sorted(f.name for f in (ROOT / "deps" / "variants" / "full").iterdir())
    assert all(f.is_symlink() and str(f.readlink()).startswith("../../../reid_nb/") for f in (repo / "deps" / "variants" / "full_se").iterdir())
    assert "matches" in run_cli("deps", "--params", params, "--check", cwd=repo, env={"PYTHONPATH": str(ROOT)}).stdout


def test_committed_deps_match_the_variants():
    "deps/variants in the repository holds exactly the links the built-in variants' models import."
    p = run_cli("deps", "--params", ROOT / "params.yaml", "--check", cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr


def test_bad_definitions_are_one_clear_line(data_root, tmp_path):
    for defs, message in (({"x": {"base": "fulll"}}, "variant_defs: variant 'x': unknown base 'fulll'; known: baseline"),
                          ({"x": {"base": "full", "channel_attn": "sse"}}, "ModelConfig.channel_attn: unknown value 'sse'"),
                          ({"x": {"base": "full", "attn": "se"}}, "unknown key(s) attn; known: base, label, description")):
        params = write_params(tmp_path, data_root, defs, variants=("baseline",))
        p = run_cli("train", "--params", params, "--variant", "baseline", "--out", tmp_path / "r", check=False)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
