"""Every notebook runs top to bottom in a Jupyter kernel, as 'Run All' in JupyterLab runs it: through `jupyter nbconvert --execute`
and a real ipykernel, every cell included (`nbdev_test` runs the cells in its own shell and skips those marked `#| eval: false`,
such as the command-line modules' `if __name__ == "__main__"` cells, which once ended a Run All in `SystemExit`)."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))          # the report template (nbs/reports/) needs the pipeline's results


def execute(nb: Path, out: Path) -> tuple[str, int, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        "--ExecutePreprocessor.timeout=1800", "--output-dir", str(out), str(nb)],
                       cwd=nb.parent, env=env, capture_output=True, text=True, timeout=3600)
    return nb.name, p.returncode, p.stderr[-2500:]


def test_every_notebook_runs_in_a_kernel(tmp_path):
    assert len(NOTEBOOKS) >= 20
    with ThreadPoolExecutor(2) as ex:                           # two kernels at a time, as nbdev_test --n_workers 2
        results = list(ex.map(lambda nb: execute(nb, tmp_path), NOTEBOOKS))
    failed = [(name, err) for name, rc, err in results if rc != 0]
    assert not failed, "\n\n".join(f"{name}:\n{err}" for name, err in failed)
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [nb.name for nb in NOTEBOOKS]
