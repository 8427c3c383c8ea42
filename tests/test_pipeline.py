"""The DVC pipeline end to end on the embedded synthetic dataset, from fresh clones of one commit of the repository's files:
`dvc repro` produces the reports, every stage's declared code dependencies are exactly the `reid_nb` modules its
command loads, a second clone gives byte-identical models and metrics (with the environment recorded in them), editing
one component's module makes exactly the stages that use it stale, a second `dvc repro` does nothing, changing one
variant's parameter reruns only that variant's stages and the report, and `dvc exp run -S 'seeds=[0,1]'` adds a seed:
only the new seed's stages run, and Table 2 then gives n = 2 and intervals over seeds."""
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
VARIANTS = ["baseline", "sam", "sam_ff", "full", "rga_s", "rga_c", "rga_sc"]   # all: each has its own code dependencies
AUDIT = ROOT / "tests" / "import_audit"


def sh(*cmd, cwd, check=True, timeout=1800, env=None):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PYTHONUNBUFFERED="1", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))   # a clone runs its own reid_nb
    p = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}\n{p.stdout[-6000:]}\n{p.stderr[-6000:]}")
    return p


def dvc(*args, cwd, **kw): return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, **kw)


def ran_stages(out: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", out))


GIT = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]


def checkout_copy(dst: Path) -> Path:
    "The repository's files (what a clone holds) copied to `dst`; the links of deps/variants stay links."
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout.split("\n")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f, follow_symlinks=False)
    assert not (dst / "data").exists() and not (dst / "runs").exists()
    return dst


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    "One commit of the repository's files (what a clone holds), with a small CPU profile in params.yaml."
    dst = checkout_copy(tmp_path_factory.mktemp("origin") / "reid_nb")
    for committed in ("reports", "metrics", "manifests"):   # the committed results: the run below must regenerate them
        shutil.rmtree(dst / committed, ignore_errors=True)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["variants"] = VARIANTS
    params["train"].update(input_size=[64, 32], epochs=2, warmup_epochs=1, milestones=[1], P=4, K=2, max_batches=3, num_workers=0)
    params["evaluate"].update(batch_size=64)
    params["seeds"] = [0]
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=dst)
    sh("git", "add", "-A", cwd=dst)
    sh(*GIT, "commit", "-qm", "fresh clone", cwd=dst)
    return dst


def clone(origin: Path, dst: Path) -> Path:
    sh("git", "clone", "-q", origin, dst, cwd=dst.parent)
    for k, v in (("user.name", "ci"), ("user.email", "ci@localhost")):   # DVC commits experiments
        sh("git", "config", k, v, cwd=dst)
    return dst


@pytest.fixture(scope="module")
def repo(origin, tmp_path_factory):
    "A fresh clone of `origin`."
    return clone(origin, tmp_path_factory.mktemp("clone1") / "reid_nb")


def run_name(v, seed=0): return f"{v}-synthetic-s{seed}"
def stage_name(kind, v, seed=0): return f"{kind}@{v}-synthetic-{seed}"


def module_of(path: str) -> str:
    "reid_nb/x.py -> reid_nb.x (reid_nb/__init__.py -> reid_nb)"
    mod = path[:-3].replace("/", ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


def declared_modules(repo: Path, deps: list[str]) -> set:
    "The reid_nb modules a stage's dependency list names: reid_nb/*.py files, and the links in deps/ folders."
    out = set()
    for d in deps:
        p = repo / d
        if d.startswith("reid_nb/") and d.endswith(".py"): out.add(module_of(d))
        elif d.startswith("deps/") and p.is_dir():
            for link in p.rglob("*.py"):
                assert link.is_symlink(), f"{link.relative_to(repo)} should be a link into reid_nb/"
                out.add(module_of(str(link.resolve().relative_to(repo.resolve()))))
    return out


def loaded_modules(log_dir: Path) -> dict:
    "stage -> the reid_nb modules its processes loaded (from tests/import_audit's logs)."
    out = {}
    for f in log_dir.glob("*.txt"):
        for line in f.read_text().splitlines():
            stage, mod = line.split("\t")
            out.setdefault(stage, set()).add(mod)
    return out


def test_repro_end_to_end(repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("imports")
    p = dvc("repro", cwd=repo, env=dict(PYTHONPATH=str(AUDIT), REID_NB_IMPORT_LOG=str(log)))
    stages = ran_stages(p.stdout)
    expected = {"data@synthetic", "report"} | {stage_name(s, v) for s in ("train", "evaluate") for v in VARIANTS}
    assert expected <= stages, (stages, p.stdout[-3000:])
    rep = repo / "reports"
    manifest = json.loads((repo / "manifests" / "synthetic.json").read_text())
    for f in ("ablation_steps.csv", "ablation_steps.md", "ablation_statement.md", "environment.csv", "environment.md", "table1.csv", "table1.md", "table2.csv", "table2.md", "cmc.png", "training_curves.png", "retrieval.png",
              "attention.png", "report.ipynb", "report.html"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    # the numbers in the report are those of the metrics files
    t2 = pd.read_csv(rep / "table2.csv")
    for v in VARIANTS:
        m = json.loads((repo / "metrics" / f"{run_name(v)}.json").read_text())
        info = json.loads((repo / "metrics" / "runs" / f"{run_name(v)}.json").read_text())   # what made them, beside the metrics
        assert set(m) == {"mAP", "mINP", "rank1", "rank5", "rank10", "rank20", "params_M", "gflops", "rerank"}, sorted(m)
        assert set(m["rerank"]) == {"mAP", "mINP", "rank1", "rank5", "rank10", "rank20"} and len(info["cmc"]) == 50
        row = t2[t2.variant == v].iloc[0]
        assert abs(row["mAP"] - 100 * m["mAP"]) < 1e-9 and abs(row["R1"] - 100 * m["rank1"]) < 1e-9
        assert abs(row["rr_mAP"] - 100 * m["rerank"]["mAP"]) < 1e-9
        assert row["n"] == 1 and (v == "baseline" or row["interval"].startswith("paired bootstrap over")), row.to_dict()
        env = info["environment"]                    # the provenance block: the clone's commit, clean, and the libraries
        assert env["code"]["commit"] == sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip() and env["code"]["dirty"] is False
        assert env["packages"]["torch"] and env["device"]["threads"] >= 1 and env["dataset"]["fingerprint"] == manifest["fingerprint"]
        assert info["train_environment"] == env and info["variant"] == v and info["seed"] == 0 and "seconds" not in info
    steps = pd.read_csv(rep / "ablation_steps.csv")
    assert list(steps.step)[:3] == ["sam − baseline", "sam_ff − sam", "full − sam_ff"], list(steps.step)
    assert "Distinguishable from zero at 95%" in (rep / "ablation_statement.md").read_text()
    env_table = (rep / "environment.md").read_text()
    assert env["code"]["commit"][:12] in env_table and f"all {len(VARIANTS)} runs" in env_table
    t1 = pd.read_csv(rep / "table1.csv")
    ours = t1[t1.method.str.startswith("ours")]
    assert len(ours) == 3 and (ours.dataset == "synthetic (embedded)").all()   # full, rga_sc and rga_s: under the data they were measured on
    assert (rep / "table1.md").read_text().startswith("**Table 1.**") and (rep / "table2.md").read_text().startswith("**Table 2.**")
    assert "| dataset |" not in (rep / "table2.md").read_text()                 # one dataset: said once, in the caption
    # the HTML is a report: the figures inline, no code, no front matter, nothing from stderr
    html = (rep / "report.html").read_text()
    assert html.count("<img") >= 4 and "load_metrics(" not in html and "skip_exec" not in html and "Warning" not in html
    # every stage declares exactly the reid_nb modules its command loaded (a missing one would hide a code change from
    # dvc; an extra one would rerun a stage for code it does not use)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    loaded = loaded_modules(log)
    assert set(loaded) >= stages - {"-"}, (sorted(loaded), sorted(stages))
    problems = []
    for stage in sorted(stages):
        declared = declared_modules(repo, [d["path"] for d in lock[stage]["deps"]])
        for m in sorted(loaded[stage] - declared): problems.append(f"{stage}: loads {m} but dvc.yaml does not list it")
        for m in sorted(declared - loaded[stage]): problems.append(f"{stage}: lists {m} but does not load it")
    assert not problems, "\n".join(problems)
    # dvc's own views of the results work
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    columns = {k for rev in shown.values() for f in rev["data"].values() for k in f["data"]}
    assert columns == {"mAP", "mINP", "rank1", "rank5", "rank10", "rank20", "params_M", "gflops", "rerank"}, columns
    for name in ("loss", "acc"):                                  # the top-level plots' data: one column per variant
        t = pd.read_csv(rep / "plots" / name / "synthetic.csv")
        assert list(t.columns) == ["epoch", *VARIANTS] and list(t.epoch) == [1, 2], t
    plots = json.loads(dvc("plots", "show", "--json", cwd=repo).stdout)["data"]
    assert {"reports/plots/loss/synthetic.csv", "reports/plots/acc/synthetic.csv", "reports/cmc.png", "reports/attention.png"} <= set(plots)
    dvc("plots", "show", "-o", str(repo / "plots_html"), cwd=repo)
    assert any((repo / "plots_html").iterdir())
    # no stage removed a file that git tracks: a stage's output folder (DVC empties it before the stage runs) holds only what
    # the stage writes (a benchmark page once kept in reports/ vanished on every repro)
    deleted = [line[3:] for line in sh("git", "status", "--porcelain", cwd=repo).stdout.splitlines() if "D" in line[:2]]
    assert not deleted, f"dvc repro deleted files that git tracks: {deleted}"


MODEL_OR_TRAINING = {f"reid_nb.{m}" for m in ("train", "losses", "step", "loader", "runs", "sampler", "models", "backbone", "head",
                                             "mhsa", "eca", "rga", "fusion", "evaluate", "metrics", "rerank", "report", "bench")}


def test_data_stage_needs_no_training_code(tmp_path):
    """The data stage imports the data side only: the `reid_nb` modules that `reid-nb prepare` loads (run by `dvc repro` of
    that one stage) are exactly those dvc.yaml lists for it, and none is a model or training module; so editing losses.py
    (what nbdev_export does after an edit of its notebook) leaves the stage up to date in `dvc status`, and editing
    data.py does not."""
    repo = checkout_copy(tmp_path / "reid_nb")
    declared = declared_modules(repo, yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["data"]["do"]["deps"])
    assert not declared & MODEL_OR_TRAINING, f"the data stage lists {sorted(declared & MODEL_OR_TRAINING)}"
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "copy", cwd=repo)
    log = tmp_path / "imports"
    log.mkdir()
    dvc("repro", "--single-item", "data@synthetic", cwd=repo, env=dict(PYTHONPATH=str(AUDIT), REID_NB_IMPORT_LOG=str(log)))
    loaded = loaded_modules(log)["data@synthetic"]
    assert loaded == declared, f"loads but not listed: {sorted(loaded - declared)}; listed, not loaded: {sorted(declared - loaded)}"
    def stale(): return set(json.loads(dvc("status", "--json", "data@synthetic", cwd=repo).stdout or "{}"))
    assert stale() == set()
    for module, expected in (("losses.py", set()), ("data.py", {"data@synthetic"})):
        f = repo / "reid_nb" / module
        before = f.read_text()
        f.write_text(before + "\n# an edit\n")
        assert stale() == expected, (module, stale())
        f.write_text(before)


IDENTICAL = [f"metrics/{d}{run_name(v)}.json" for v in ("baseline", "rga_s") for d in ("", "runs/")] + \
    [f"runs/{run_name(v)}/{f}" for v in ("baseline", "rga_s") for f in ("model.safetensors", "config.json", "ranking.json")]


def test_a_second_clone_gives_the_same_bytes(origin, repo, tmp_path_factory):
    "Two clones of one commit, one machine, one environment: the same models, configs, rankings and metrics, byte for byte."
    other = clone(origin, tmp_path_factory.mktemp("clone2") / "reid_nb")
    dvc("repro", *(stage_name("evaluate", v) for v in ("baseline", "rga_s")), cwd=other)
    for f in IDENTICAL:
        assert (other / f).read_bytes() == (repo / f).read_bytes(), f"{f} differs between two clones of one commit"
    times = json.loads((other / "runs" / run_name("baseline") / "eval_summary.json").read_text())
    assert times["seconds"]["features"] > 0                               # the wall times live beside the run, not in the metrics


def stale_stages(repo) -> set:
    "The pipeline's stages that `dvc status` reports as changed (data.dvc, the paper archives' pin, is not a stage of the CPU profile)."
    return {k for k in json.loads(dvc("status", "--json", cwd=repo).stdout or "{}") if not k.endswith(".dvc")}


def test_editing_a_component_stales_exactly_its_users(repo):
    "What nbdev_export does after an edit of nbs/04_rga.ipynb: rga.py changes; only the RGA runs and the report go stale."
    rga = repo / "reid_nb" / "rga.py"
    before = rga.read_text()
    try:
        rga.write_text(before + "\n# an edit\n")
        assert stale_stages(repo) == {stage_name(s, v) for s in ("train", "evaluate") for v in ("rga_s", "rga_c", "rga_sc")} | {"report"}
        rga.write_text(before)
        (repo / "reid_nb" / "eca.py").write_text((repo / "reid_nb" / "eca.py").read_text() + "\n# an edit\n")
        assert stale_stages(repo) == {stage_name("train", "full"), stage_name("evaluate", "full"), "report"}
    finally:
        rga.write_text(before)
        sh("git", "checkout", "--", "reid_nb/eca.py", cwd=repo)
    assert stale_stages(repo) == set()


def test_second_repro_does_nothing(repo):
    p = dvc("repro", cwd=repo)
    assert ran_stages(p.stdout) == set(), p.stdout[-3000:]


def test_changing_one_variant_reruns_only_it(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["overrides"]["baseline"]["lr"] = 0.001
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = dvc("repro", cwd=repo)
    assert ran_stages(p.stdout) == {stage_name("train", "baseline"), stage_name("evaluate", "baseline"), "report"}, p.stdout[-3000:]


def test_more_seeds_by_experiment(repo):
    """The README's way to add seeds, and `dvc exp run -S` with several keys: only the new seed's stages of the chosen variants run;
    `dvc exp show` lists the experiment with its parameters and metrics; Table 2 then has n = 2 and intervals over seeds."""
    two = ["baseline", "full"]
    p = dvc("exp", "run", "-n", "two-seeds", "-S", "seeds=[0,1]", "-S", f"variants=[{','.join(two)}]", cwd=repo)
    assert ran_stages(p.stdout) == {stage_name(s, v, 1) for s in ("train", "evaluate") for v in two} | {"report"}, p.stdout[-3000:]
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == "two-seeds"]
    assert exps, json.dumps(shown)[:3000]
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["seeds"] == [0, 1] and data["params"]["params.yaml"]["data"]["variants"] == two
    assert f"metrics/{run_name('full', 1)}.json" in data["metrics"]
    t2 = pd.read_csv(repo / "reports" / "table2.csv")
    assert list(t2.variant) == two and (t2.n == 2).all(), t2[["variant", "n"]]
    for v in two:
        a = [json.loads((repo / "metrics" / f"{run_name(v, s)}.json").read_text())["mAP"] * 100 for s in (0, 1)]
        row = t2[t2.variant == v].iloc[0]
        assert abs(row["mAP"] - sum(a) / 2) < 1e-9 and abs(row["mAP_sd"] - abs(a[0] - a[1]) / 2 ** 0.5) < 1e-9
        assert v == "baseline" or (row["interval"] == "Welch t over seeds (2 vs 2)" and row["delta_lo"] <= row["delta_mAP"] <= row["delta_hi"])


def test_a_failed_profile_run_leaves_params_alone(repo):
    """`reid-nb profile` of a profile that fails: a value out of its range is refused before anything runs (params.py's
    ranges), a run that fails (a stage's error) ends in one line too; either way params.yaml is what it was (dvc exp run
    had rewritten it)."""
    before = (repo / "params.yaml").read_bytes()
    def profile_with(key, value):
        bad = yaml.safe_load(before)
        bad["train"][key] = value
        (repo / "params-broken.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
        return sh(sys.executable, "-m", "reid_nb.cli", "profile", "broken", cwd=repo, check=False)
    p = profile_with("gamma", -1)                                  # out of its range: refused before dvc runs
    assert p.returncode == 2 and "params-broken.yaml: train.gamma=-1" in p.stderr and "dvc exp run" not in p.stderr, \
        p.stderr[-3000:]
    assert (repo / "params.yaml").read_bytes() == before
    p = profile_with("pretrained", "missing-weights.pth")          # in range, but the train stage cannot find the file
    assert p.returncode == 2 and "dvc exp run exited with status" in p.stderr and "params.yaml restored" in p.stderr, \
        p.stderr[-3000:]
    assert (repo / "params.yaml").read_bytes() == before
