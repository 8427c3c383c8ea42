"""Shared fixtures: one small synthetic dataset per test session, the CLI as a subprocess."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, check=True, timeout=900):
    "Run `python -m reid_nb.cli ARGS` and return the CompletedProcess (stdout+stderr as text)."
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "reid_nb.cli", *map(str, args)], cwd=cwd, env=e, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"reid-nb {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    "A data root holding the embedded synthetic dataset (generated once per session)."
    root = tmp_path_factory.mktemp("data")
    run_cli("synth", "--root", root / "synthetic")
    return root


# A training configuration small enough for 2 CPU cores in seconds.
TINY = ["--variant", "baseline", "--dataset", "synthetic", "--input-size", "64", "32", "--P", "4", "--K", "2",
        "--num-workers", "0", "--no-progress", "--warmup-epochs", "1"]


def fresh_copy(dst: Path, drop=("reports", "metrics", "manifests")) -> Path:
    """Copy the repository's files as a clone holds them (tracked and untracked-not-ignored) into `dst`, without the
    committed results in `drop`, and commit them in a new git repository there (DVC experiments need a commit)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f, follow_symlinks=False)   # deps/variants/* stay links
    assert not (dst / "data").exists() and not (dst / "runs").exists()
    for committed in drop: shutil.rmtree(dst / committed, ignore_errors=True)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    for k, v in (("user.name", "ci"), ("user.email", "ci@localhost")):   # an identity of the copy's own (DVC commits experiments)
        subprocess.run(["git", "config", k, v], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run(git + ["commit", "-qm", "fresh clone"], cwd=dst, check=True)
    return dst
