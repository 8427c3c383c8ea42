"""A variant declared in a params file, without code: `variant_defs: {full_se: {base: full, channel_attn: se}}` trains through
`reid-nb train --params P --variant full_se`, evaluates (also without the params file), and appears in Table 2 under its label;
`reid-nb deps` writes its deps/variants links and variant.json, and train/evaluate refuse a stale variant.json; reading the params
file imports no attention module; a bad definition, or a bad $REID_NB_VARIANT_DEFS, is a one-line message."""
import os
import subprocess
import sys
from types import SimpleNamespace
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
    # the run is usable by a process that never read the params file: config.json holds the whole architecture
    alone = tmp_path / "alone.json"
    run_cli("evaluate", "--run", run, "--data-root", data_root, "--metrics", alone, "--no-progress")
    test_m = json.loads(metrics.read_text())
    assert json.loads(alone.read_text())["mAP"] == test_m["mAP"]
    # Table 2, as the report computes it, in a process that read the same params file
    code = ("import sys; from reid_nb.cli import read_params; from reid_nb.tables import load_metrics, table2; "
            f"read_params({str(params)!r}); t = table2(load_metrics({str(metrics.parent)!r})); "
            "print(t[['variant', 'model']].to_json(orient='records'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [{"variant": "full_se", "model": LABEL}], p.stdout


def test_deps_writes_and_checks_the_links(data_root, tmp_path):
    repo = tmp_path / "repo"
    (repo / "deps").mkdir(parents=True)
    shutil.copytree(ROOT / "deps" / "variants", repo / "deps" / "variants", symlinks=True)
    params = write_params(repo, data_root, {"full_se": {"base": "full", "channel_attn": "se"}})
    p = run_cli("deps", "--params", params, "--check", cwd=repo, check=False,
                env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "full_se: +backbone.py +eca.py +fusion.py +head.py +mhsa.py +models.py +variant.json" in p.stderr, p.stderr
    run_cli("deps", "--params", params, cwd=repo, env={"PYTHONPATH": str(ROOT)})
    folder = repo / "deps" / "variants" / "full_se"
    links = sorted(f.name for f in folder.iterdir() if f.name != "variant.json")
    assert links == sorted(f.name for f in (ROOT / "deps" / "variants" / "full").iterdir())
    assert all(f.is_symlink() and str(f.readlink()).startswith("../../../reid_nb/") for f in folder.iterdir() if f.name != "variant.json")
    rec = json.loads((folder / "variant.json").read_text())
    assert rec["config"]["channel_attn"] == "se" and rec["base"] == "full" and list(rec) == sorted(rec)
    assert "matches" in run_cli("deps", "--params", params, "--check", cwd=repo, env={"PYTHONPATH": str(ROOT)}).stdout


def test_stale_variant_json_is_refused(data_root, tmp_path):
    "After an edit of a definition without `reid-nb deps`, train and evaluate stop with one line naming the file; deps rewrites it."
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PYTHONPATH": str(ROOT)}
    params = write_params(repo, data_root, {"full_se": {"base": "full", "channel_attn": "se"}})
    run_cli("deps", "--params", params, cwd=repo, env=env)
    params = write_params(repo, data_root, {"full_se": {"base": "full", "channel_attn": "cbam"}})
    run = repo / "runs" / "full_se-synthetic-s0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"variant": "full_se"}))
    for args in (("train", "--variant", "full_se", "--out", repo / "r"), ("evaluate", "--run", run)):
        p = run_cli(*args, "--params", params, cwd=repo, env=env, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "deps/variants/full_se/variant.json: differs from variant 'full_se'" in p.stderr and "reid-nb deps" in p.stderr, p.stderr
    p = run_cli("deps", "--params", params, "--check", cwd=repo, env=env, check=False)
    assert p.returncode == 2 and "full_se: ~variant.json" in p.stderr, p.stderr
    run_cli("deps", "--params", params, cwd=repo, env=env)
    assert json.loads((repo / "deps" / "variants" / "full_se" / "variant.json").read_text())["config"]["channel_attn"] == "cbam"


def test_reading_params_imports_no_attention_module(tmp_path, data_root):
    "The data stage reads params.yaml; its dvc.yaml deps list no attention module, so registering a declared variant imports none."
    params = write_params(tmp_path, data_root, {"full_se": {"base": "full", "channel_attn": "se", "relation_attn": "rga_s"}})
    code = ("import sys; from reid_nb.cli import read_params; read_params(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m in ('timm', 'reid_nb.eca', 'reid_nb.mhsa', 'reid_nb.rga', 'reid_nb.fusion')))")
    p = subprocess.run([sys.executable, "-c", code, str(params)], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.strip() == "[]", p.stdout


def test_variant_env(tmp_path, data_root, monkeypatch):
    "Registering leaves os.environ alone; `reid-nb report` sets $REID_NB_VARIANT_DEFS for its kernel only; a bad value is one line."
    from reid_nb import cli, models, report
    params = write_params(tmp_path, data_root, {"full_se_env": {"base": "full", "channel_attn": "se"}}, variants=("baseline", "full_se_env"))
    monkeypatch.delenv(models.VARIANTS_ENV, raising=False)
    seen = {}
    def fake_report(template, out, parameters):
        seen["env"] = os.environ.get(models.VARIANTS_ENV)
        return "nb", "html"
    monkeypatch.setattr(report, "run_report", fake_report)
    try:
        cli.read_params(params)
        assert models.VARIANTS_ENV not in os.environ
        cli._report(SimpleNamespace(params=params, metrics_dir="m", runs_dir="r", template="t", out="o"))
        assert json.loads(seen["env"])["full_se_env"] == {"base": "full", "channel_attn": "se"}
        assert models.VARIANTS_ENV not in os.environ               # not left for what runs next
    finally:
        for n in ("full_se_env",): models.VARIANTS.pop(n, None); models.DECLARED.pop(n, None)
    for bad, message in (("{full_se", "$REID_NB_VARIANT_DEFS is not valid JSON"),
                         ('{"y": {"base": "nope"}}', "$REID_NB_VARIANT_DEFS: variant 'y': unknown base 'nope'")):
        p = run_cli("variants", env={models.VARIANTS_ENV: bad}, check=False)
        assert p.returncode == 0 and message in p.stderr and "Traceback" not in p.stderr and "baseline" in p.stdout, p.stderr
        p = run_cli("train", "--variant", "y", "--out", tmp_path / "r", env={models.VARIANTS_ENV: bad}, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown variant" in p.stderr, p.stderr


def test_committed_deps_match_the_variants():
    "deps/variants in the repository holds exactly the links the built-in variants' models import."
    p = run_cli("deps", "--params", ROOT / "params.yaml", "--check", cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr


def test_bad_definitions_are_one_clear_line(data_root, tmp_path):
    for defs, message in (({"x": {"base": "fulll"}}, "variant_defs: variant 'x': unknown base 'fulll'; known: baseline"),
                          ({"x": {"base": "full", "channel_attn": "sse"}}, "variant 'x': ModelConfig.channel_attn: unknown value 'sse'"),
                          ({"x": {"base": "full", "attn": "se"}}, "unknown key(s) attn; known: base, label, description")):
        params = write_params(tmp_path, data_root, defs, variants=("baseline", "x"))
        # an attention name is checked when the model is first built (training x), or by `reid-nb deps`
        for args in (("train", "--params", params, "--variant", "x", "--out", tmp_path / "r"), ("deps", "--params", params, "--check")):
            p = run_cli(*args, check=False, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
            assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
