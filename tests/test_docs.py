"""The notebooks as documents: every teaching chapter is committed with its outputs (printed results, tables,
figures) and every other notebook with the PNGs of its figure cells only, all of them stable (no stderr, widget state,
metadata or execution counts) and small, so JupyterLab, a code host and the book show them and diffs stay small;
`nbdev_clean` leaves every notebook as committed; nbdev's doc processing (`nbdev_proc_nbs`, the step of `nbdev_docs`
before quarto renders the site) succeeds on every notebook. Re-run the chapters with `python tools/run_notebooks.py [NOTEBOOK...]`."""
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from run_notebooks import TEACHING, check_outputs  # noqa: E402

NBS = ROOT / "nbs"
NOTEBOOKS = sorted(f for f in NBS.rglob("*.ipynb") if not any(s.startswith((".", "_")) for s in f.relative_to(NBS).parts))
BIN = Path(sys.executable).parent


def _cfg():
    c = configparser.ConfigParser(); c.read(ROOT / "settings.ini"); return c["DEFAULT"]


def test_settings_keep_figures_and_the_hand_written_readme():
    c = _cfg()
    assert c["clear_all"] == "False"                         # nbdev_clean keeps outputs...
    assert "tags" in c["allowed_cell_metadata_keys"].split()  # ...and the `figure` tag that marks the cells allowed to have them
    assert c["jupyter_hooks"] == "True"                      # a JupyterLab save runs nbdev_clean (test_jupyterlab_save)
    assert (NBS / "index.ipynb").exists()                    # the docs site's front page
    # nbdev_docs/nbdev_prepare regenerate README.md from `readme_nb` when that notebook is newer; README.md is written by
    # hand (and tests/test_readme.py checks its tables), so `readme_nb` names no notebook and nbdev never overwrites it
    assert not (NBS / c["readme_nb"]).exists()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: str(p.relative_to(NBS)))
def test_outputs_are_stable_and_small(nb):
    assert check_outputs(json.loads(nb.read_text(encoding="utf-8")), nb.name) == []


@pytest.mark.parametrize("name", TEACHING)
def test_every_teaching_chapter_shows_its_outputs(name):
    "A teaching chapter is committed executed: a reader sees its results without running it."
    cells = json.loads((NBS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    assert any(c.get("outputs") for c in cells), f"{name} has no outputs: run python tools/run_notebooks.py"


def _copy_project(dst: Path):
    for f in subprocess.run(["git", "ls-files", "nbs", "reid_nb", "settings.ini"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split():
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    for nb in NOTEBOOKS:  # the working copies, committed or not
        shutil.copy2(nb, dst / nb.relative_to(ROOT))


def test_nbdev_clean_leaves_every_notebook_unchanged(tmp_path):
    _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_clean")], cwd=tmp_path, check=True, capture_output=True)
    changed = [str(nb.relative_to(ROOT)) for nb in NOTEBOOKS if (tmp_path / nb.relative_to(ROOT)).read_bytes() != nb.read_bytes()]
    assert not changed, f"nbdev_clean changes {changed}: run nbdev_clean (or tools/run_notebooks.py) on them"


def test_nbdev_proc_nbs_processes_every_notebook(tmp_path):
    """`nbdev_proc_nbs` runs in a copy of the project (it writes `_proc/`, `nbs/_quarto.yml`, `nbs/sidebar.yml` and
    `reid_nb/_modidx.py`). It installs quarto when none is on the PATH, although it never calls it: a stub named `quarto`
    stands in, so the step runs where quarto cannot be installed. Every notebook's processed copy must come out."""
    _copy_project(tmp_path)
    stub = tmp_path / "bin" / "quarto"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\necho 'quarto stub: nbdev_proc_nbs does not call quarto' >&2\nexit 1\n")
    stub.chmod(0o755)
    # OMP_NUM_THREADS=1: two workers import torch at once on 2 cores (as tests/test_notebooks.py's two kernels)
    env = dict(os.environ, PATH=f"{stub.parent}{os.pathsep}{os.environ['PATH']}", MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([str(BIN / "nbdev_proc_nbs"), "--n_workers", "2"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    missing = [str(nb.relative_to(NBS)) for nb in NOTEBOOKS if not (tmp_path / "_proc" / nb.relative_to(NBS)).exists()]
    assert not missing, f"nbdev_proc_nbs did not process {missing}"


def test_index_lists_every_chapter():
    "The front page's reading order names every chapter (add a line to nbs/index.ipynb for a new notebook)."
    index = "".join("".join(c["source"]) for c in json.loads((NBS / "index.ipynb").read_text(encoding="utf-8"))["cells"])
    missing = [nb.name for nb in NOTEBOOKS if nb.parent == NBS and nb.name != "index.ipynb" and f"]({nb.name})" not in index]
    assert not missing, f"nbs/index.ipynb does not list {missing}"


# The papers go by their names, FSAFC-Net (An, Lim, He, Kang) and RGA (Zhang et al., CVPR 2020); "seed" means a random seed
# (CONTRIBUTING.md). These phrases once called the FSAFC-Net paper "the seed"; none may come back, in prose, comments,
# labels or the generated report.
PAPER_AS_SEED = re.compile(r"seed paper|\bthe seed's\b|\(seed's method\)|\s\(seed\)|\(the seed\)|, the seed\)|\bseed ref\."
                           r"|\bseed / paper\b|\bthe seed (fuses|keeps|adds|follows|cites|does not say)\b|\bSEED_ABLATION\b",
                           re.IGNORECASE)


def _tracked_text_files():
    for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines():
        p = ROOT / f
        if p.is_symlink() or not p.is_file() or p.name == Path(__file__).name:
            continue
        try:
            yield f, p.read_text(encoding="utf-8")
        except UnicodeDecodeError:   # images, archives
            continue


def test_papers_go_by_their_names_not_the_seed():
    hits = [f"{f}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for f, text in _tracked_text_files()
            for m in PAPER_AS_SEED.finditer(text)]
    assert not hits, "call the paper FSAFC-Net (or RGA), not 'the seed' (CONTRIBUTING.md):\n" + "\n".join(hits[:40])
