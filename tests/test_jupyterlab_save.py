"""Opening a notebook in JupyterLab and saving it leaves `git status` clean.

JupyterLab saves through jupyter_server's contents manager (`ContentsManager.save`), after writing into the notebook
the metadata of the kernel it started (kernelspec display name "Python 3 (ipykernel)", a `language_info` block with the
Python version). nbdev_clean writes the kernelspec's name as its display name and keeps no `language_info`, so the two
cannot agree on the file; the README's setup runs `nbdev_install_hooks`, which makes jupyter_server run nbdev_clean on
every save (`jupyter_hooks = True` in settings.ini). These tests do what JupyterLab does, in-process: the hook nbdev
installs, a contents manager rooted at the repository (`jupyter lab`, the README's command), a real kernel's metadata,
`.save()`, then ask git."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jupyter_server")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import start_new_kernel  # noqa: E402
from jupyter_server.services.contents.filemanager import FileContentsManager  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXECUTED = "12_sampler.ipynb"   # a chapter committed with its outputs, deterministic without the tool's seed


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A git repository holding this checkout's notebooks and settings as committed, the README's setup step
    (`nbdev_install_hooks`, with HOME in tmp_path) done in it, and the contents manager `jupyter lab` would use."""
    repo, home = tmp_path / "repo", tmp_path / "home"
    home.mkdir()
    for f in git(ROOT, "ls-files", "nbs", "settings.ini", ".gitignore", ".gitattributes", ".gitconfig").split("\n"):
        if f and (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "notebooks")
    env = dict(os.environ, HOME=str(home))
    subprocess.run([str(BIN / "nbdev_install_hooks")], cwd=repo, env=env, check=True, capture_output=True)
    assert git(repo, "status", "--porcelain") == "", "the README's nbdev_install_hooks leaves files for git to see"
    cfg = PyFileConfigLoader("jupyter_server_config.py", path=str(home / ".jupyter")).load_config()
    monkeypatch.chdir(repo)                       # `jupyter lab` is started from the repository's root
    monkeypatch.setenv("HOME", str(home))
    cm = FileContentsManager(config=cfg, root_dir=str(repo))
    assert cm.pre_save_hook is not None, "nbdev_install_hooks installed no pre-save hook"
    return repo, cm


def kernel_metadata() -> dict:
    "The notebook metadata JupyterLab writes once its kernel is up: the kernelspec and the kernel's language_info."
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.kernel_info()
        info = kc.get_shell_msg(timeout=60)["content"]["language_info"]
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": "python3"},
            "language_info": info}


def test_open_and_save_every_notebook_unedited_leaves_git_clean(lab, caplog):
    repo, cm = lab
    meta = kernel_metadata()
    assert meta["kernelspec"]["display_name"] != meta["kernelspec"]["name"]    # what made git see a change before
    names = sorted(f"nbs/{p.name}" for p in (repo / "nbs").glob("*.ipynb"))
    assert len(names) >= 20
    for name in names:
        model = cm.get(name, content=True, type="notebook")
        model["content"]["metadata"].update(json.loads(json.dumps(meta)))
        cm.save(model, name)
    assert "hook" not in caplog.text, caplog.text[-2000:]       # the hook ran without an error on every save
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == "", (
        "run `python tools/run_notebooks.py --format`:\n" + git(repo, "status", "--porcelain"))


def test_run_all_and_save_a_chapter_with_outputs_leaves_git_clean(lab):
    "Run All in a kernel (execution counts, kernel metadata) then save: the committed outputs come back the same."
    import nbformat
    from nbclient import NotebookClient
    repo, cm = lab
    nb = nbformat.read(repo / "nbs" / EXECUTED, as_version=4)
    assert any(c.get("outputs") for c in nb.cells), f"{EXECUTED} is committed without outputs"
    env = os.environ.pop("MPLBACKEND", None)      # JupyterLab's kernel draws inline
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(repo / "nbs")}}).execute()
    finally:
        if env is not None: os.environ["MPLBACKEND"] = env
    assert any(c.get("execution_count") for c in nb.cells)
    nb.metadata.update(kernel_metadata())
    cm.save({"type": "notebook", "format": "json", "content": nb}, f"nbs/{EXECUTED}")
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == "", git(repo, "diff")[:3000]
