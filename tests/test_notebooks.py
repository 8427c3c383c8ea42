"""Every notebook runs top to bottom in a Jupyter kernel, as 'Run All' in JupyterLab runs it: through nbclient (what
`jupyter nbconvert --execute` runs) and a real ipykernel, from the notebook's own folder (`nbdev_test` runs the cells in
its own shell and skips those marked `#| eval: false`, such as the command-line modules' `if __name__ == "__main__"`
cells, which once ended a Run All in `SystemExit`).

Every cell runs except those flagged `#| slow` (settings.ini's `tst_flags`, which `nbdev_test` skips too): each
repeats, at full size, what a pytest integration test already runs, named in SLOW_COVERED; `python
tools/run_notebooks.py` runs them when it executes the teaching chapters for their committed outputs."""
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))   # the report template (nbs/reports/) needs the pipeline's results
SLOW = re.compile(r"^\s*#\|\s*slow\s*$", re.MULTILINE)
# notebook -> the integration test that runs its `#| slow` cells' code (a new slow cell needs an entry here)
SLOW_COVERED = {
    "000_first_lesson.ipynb": "tests/test_pipeline.py::test_repro_end_to_end (baseline and full trained by fit, "
                              "evaluated by evaluate_run, the ranking and attention figures drawn by the report); "
                              "python tools/run_notebooks.py runs the lesson itself",
    "07_models.ipynb": "tests/test_rehearsal.py (baseline, full and rga_sc trained at 256x128, width 1.0: every "
                       "attention module of the other variants); the cell below it checks every variant at 64x32",
    "36_export.ipynb": "tests/test_export.py::test_every_other_variant_exports_and_matches, "
                       "test_cli_exports_a_trained_run",
}


RUN = """import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(nb, sys.argv[1])"""


def slow_cells(nb: dict) -> list[str]:
    return [c.get("id") for c in nb["cells"] if c["cell_type"] == "code" and SLOW.search("".join(c["source"]))]


def execute(nb: Path, out: Path) -> tuple[str, int, str]:
    "Run `nb` without its slow cells (a copy beside it, so relative paths hold) and return (name, exit status, stderr)."
    d = json.loads(nb.read_text(encoding="utf-8"))
    d["cells"] = [c for c in d["cells"] if c.get("id") not in slow_cells(d)]
    copy = out / nb.name
    copy.write_text(json.dumps(d, indent=1, ensure_ascii=False), encoding="utf-8")
    # One thread per kernel: two kernels run at once on 2 cores, and two OpenMP pools of 2 threads each (torch's default,
    # one per core) spin against each other: measured on 2 cores, 280 s for all notebooks with 2 threads each, 150 s with 1.
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", RUN, str(copy), str(nb.parent)], cwd=nb.parent, env=env,
                       capture_output=True, text=True, timeout=3600)
    return nb.name, p.returncode, p.stderr[-2500:]


def test_every_slow_cell_is_covered_by_an_integration_test():
    slow = {nb.name for nb in NOTEBOOKS if slow_cells(json.loads(nb.read_text(encoding="utf-8")))}
    assert slow == set(SLOW_COVERED), f"#| slow cells in {sorted(slow)}; SLOW_COVERED names {sorted(SLOW_COVERED)}"


def test_every_notebook_runs_in_a_kernel(tmp_path):
    assert len(NOTEBOOKS) >= 20
    with ThreadPoolExecutor(2) as ex:                           # two kernels at a time, as nbdev_test --n_workers 2
        results = list(ex.map(lambda nb: execute(nb, tmp_path), NOTEBOOKS))
    failed = [(name, err) for name, rc, err in results if rc != 0]
    assert not failed, "\n\n".join(f"{name}:\n{err}" for name, err in failed)
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [nb.name for nb in NOTEBOOKS]
