"""Signals, locks, full disks and temporary folders, as a scheduler, a second user or a small disk meet them. SIGTERM
(what `kill`, `timeout`, a batch scheduler and a container stop send) ends a command like Ctrl-C: one line, status 143,
the lock released, no temporary file, and a training run resumes to the same weights. Two processes never hold one run
folder, however their locks die; a lock file left by a killed run is free whatever it says. A full disk while a
checkpoint, metrics or features are written is one line naming the file, and the previous file is intact. A notebook's
test cells leave no temporary folder."""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from test_reliability import cli, one_line_error

SMALL = [*TINY, "--width", "0.25"]                  # the CPU profile's slim trunk: a step in a fraction of a second
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def popen(*args, fsize: int | None = None, **kw):
    "`python -m reid_nb.cli ARGS` in the background; `fsize`: a file-size limit (a full disk: writes get EFBIG)."
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # else the kernel kills the writer, not fail the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.Popen([sys.executable, "-m", "reid_nb.cli", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit if fsize else None, **kw)


def finish(proc, timeout=300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def handles_sigterm(pid: int) -> bool:
    "Whether process `pid` catches SIGTERM (its bit in /proc/PID/status's SigCgt): reid-nb's handler is installed."
    try: text = Path(f"/proc/{pid}/status").read_text()
    except OSError: return False
    return bool(int(re.search(r"^SigCgt:\s*([0-9a-f]+)", text, re.M).group(1), 16) >> (signal.SIGTERM - 1) & 1)


def term_when_ready(proc, timeout=120):
    """SIGTERM to the command's process group (it and its data-loader workers, as a scheduler's cancel sends it) once
    it has started its work (its handler is in place); to code without one, never: it just ends."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if handles_sigterm(proc.pid):
            time.sleep(1)                                # into the work: the model loaded, the workers started
            os.killpg(proc.pid, signal.SIGTERM); return
        time.sleep(0.02)


def litter(folder: Path) -> list[str]:
    "The lock and temporary files (`.NAME.tmpPID`) left in `folder`."
    return sorted(p.name for p in folder.rglob(".*") if p.name == ".reid_nb.lock" or re.search(r"\.tmp\d+$", p.name))


def interrupted_line(p, command: str) -> str:
    "The command was stopped by SIGTERM with one line, status 143 (128 + 15), and no traceback."
    out = p.stdout + p.stderr
    assert p.returncode == 143, (p.returncode, out)
    assert "Traceback" not in out, out
    lines = [l for l in p.stderr.splitlines() if l.startswith(f"reid-nb {command}:")]
    assert len(lines) == 1 and lines[0].startswith(f"reid-nb {command}: interrupted by SIGTERM"), p.stderr
    return lines[0]


def command_args(command: str, run: Path, data_root: Path, metrics: Path, features: Path) -> list:
    "The arguments of `reid-nb evaluate` (writing `metrics`) or `reid-nb extract` (the test images' `features`)."
    if command == "evaluate": return ["--run", run, "--data-root", data_root, "--metrics", metrics, "--no-progress"]
    return ["--run", run, "--images", data_root / "synthetic" / "bounding_box_test", "--out", features, "--no-progress"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    "A finished tiny run (1 epoch of 2 batches), to evaluate, extract from, or resume."
    out = tmp_path_factory.mktemp("trained") / "run"
    p = cli("train", *SMALL, "--data-root", data_root, "--out", out, "--epochs", "1", "--max-batches", "2")
    assert p.returncode == 0, p.stderr
    return out


# 1. SIGTERM -----------------------------------------------------------------------------------------------------------

def test_sigterm_stops_training_with_one_line_and_resume_reaches_the_same_weights(data_root, tmp_path):
    args = [*SMALL, "--data-root", data_root, "--epochs", "2", "--max-batches", "4"]
    proc = popen("train", *args, "--out", tmp_path / "cut")
    for line in proc.stdout:                             # epoch 1 done: the SIGTERM lands in epoch 2 (or just after it)
        if "epoch 1/2:" in line: break
    proc.send_signal(signal.SIGTERM)
    p = finish(proc)
    line = interrupted_line(p, "train")
    ckpt = tmp_path / "cut" / "last.safetensors"
    assert re.fullmatch(r"reid-nb train: interrupted by SIGTERM (in epoch \d, after batch \d|after epoch \d); "
                        rf"{re.escape(str(ckpt))} holds the run up to there: continue it with --resume", line), line
    assert litter(tmp_path / "cut") == []                    # lock released, no temporary checkpoint
    resumed = popen("train", *args, "--out", tmp_path / "cut", "--resume")   # processes alike (threads reorder sums)
    r = finish(popen("train", *args, "--out", tmp_path / "straight")), finish(resumed)
    assert [x.returncode for x in r] == [0, 0] and "resuming" in r[1].stdout, [x.stdout + x.stderr for x in r]
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("cut", "straight")]
    assert weights[0] == weights[1]


def test_sigterm_to_the_process_group_and_its_data_loader_workers_is_one_line_too(data_root, tmp_path):
    "A scheduler's cancel or `systemd` signals every process of the job: the workers die first, and it is still a stop."
    out = tmp_path / "run"
    proc = popen("train", *SMALL, "--num-workers", "2", "--data-root", data_root, "--epochs", "3", "--max-batches", "4",
                 "--out", out, start_new_session=True)
    for line in proc.stdout:
        if "epoch 1/3:" in line: break
    time.sleep(0.5)                                      # into epoch 2, its workers running
    os.killpg(proc.pid, signal.SIGTERM)
    line = interrupted_line(finish(proc), "train")
    ckpt = re.escape(str(out / "last.safetensors"))
    assert re.fullmatch(rf"reid-nb train: interrupted by SIGTERM.*[ (]{ckpt}[ )].* --resume", line), line
    assert litter(out) == []
    with pytest.raises(ProcessLookupError): os.killpg(proc.pid, 0)       # no worker left behind


@pytest.mark.parametrize("command", ["evaluate", "extract"])
def test_sigterm_stops_evaluate_and_extract_with_one_line(command, trained, data_root, tmp_path):
    out = tmp_path / "out"
    extra = ["--num-workers", "2", "--data-path", "classic"] if command == "evaluate" else []
    args = command_args(command, trained, data_root, out / "metrics.json", out / "features.npz") + extra
    proc = popen(command, *args, start_new_session=True)
    term_when_ready(proc)
    interrupted_line(finish(proc), command)
    with pytest.raises(ProcessLookupError): os.killpg(proc.pid, 0)       # no worker left behind
    assert not out.exists() or litter(out) == [] and not any(out.iterdir()), sorted(out.rglob("*"))
    assert litter(trained) == []


# 2. the lock ----------------------------------------------------------------------------------------------------------

CONTENDER = """
import os, random, sys, time
from pathlib import Path
from reid_nb.core import FolderLock, FolderLocked
folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
random.seed(int(sys.argv[3]))
for _ in range(rounds):
    pid = os.fork()
    if pid == 0:            # a child takes the lock, checks nobody else is inside, and half the time dies holding it
        try: lock = FolderLock(folder, "contender").acquire()
        except FolderLocked: os._exit(3)
        try: fd = os.open(folder / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with open(folder / "two-holders", "a") as f: f.write(f"{os.getpid()}\\n")
            os._exit(2)
        time.sleep(0.002)
        os.close(fd); os.unlink(folder / "inside")
        if random.random() < 0.5: lock.release()
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_lock_contention_with_holders_that_die_never_gives_the_folder_to_two(tmp_path):
    folder = tmp_path / "run"; folder.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(folder), "150", str(k)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    two = (folder / "two-holders").read_text().split() if (folder / "two-holders").exists() else []
    assert two == [], f"{len(two)} of 450 rounds had two processes holding the lock"


def test_a_lock_left_with_a_live_unrelated_pid_or_garbage_is_taken_over(data_root, tmp_path):
    import socket
    from reid_nb.core import FolderLock
    out = tmp_path / "run"; out.mkdir()
    other = subprocess.Popen(["sleep", "60"])                # alive, and not a reid-nb run: the PID was reused
    try:
        left = dict(pid=other.pid, host=socket.gethostname(), what="reid-nb train")
        (out / ".reid_nb.lock").write_text(json.dumps(left))
        p = cli("train", *SMALL, "--data-root", data_root, "--out", out, "--epochs", "1", "--max-batches", "1")
        assert p.returncode == 0 and f"taking over a stale lock of PID {other.pid}" in p.stderr, p.stderr
    finally:
        other.kill(); other.wait()
    assert litter(out) == []
    (out / ".reid_nb.lock").write_bytes(b"\x00\xff not json")  # a lock file cut short, or scribbled on
    with FolderLock(out) as lock: assert f'"pid": {os.getpid()}' in lock.path.read_text()
    assert litter(out) == []


def test_a_live_holder_is_named_and_a_killed_ones_lock_is_free_at_once(tmp_path):
    "A run that holds the folder is named in the refusal; killed with -9, its lock is free at once (no age guessed)."
    from reid_nb.core import FolderLock, FolderLocked
    out = tmp_path / "run"
    code = ("import sys, time; from reid_nb.core import FolderLock; FolderLock(sys.argv[1], 'holder').acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        named = rf"{re.escape(str(out))} is in use by PID {holder.pid} on .* \(holder, since"
        with pytest.raises(FolderLocked, match=named):
            FolderLock(out).acquire()
        (out / ".reid_nb.lock").write_text("{}")              # whatever the file says: the OS lock decides
        with pytest.raises(FolderLocked, match="is in use by another process"): FolderLock(out).acquire()
    finally:
        holder.kill(); holder.wait(); holder.stdout.close()
    with FolderLock(out) as lock: assert lock.held
    assert litter(out) == []


# 3. a full disk -------------------------------------------------------------------------------------------------------

def test_a_full_disk_while_saving_the_checkpoint_is_one_line_and_keeps_the_previous_one(trained, data_root, tmp_path):
    run = tmp_path / "run"; shutil.copytree(trained, run)
    before = (run / "last.safetensors").read_bytes()
    p = finish(popen("train", *SMALL, "--data-root", data_root, "--out", run, "--epochs", "2", "--max-batches", "2",
                     "--resume", "--allow-changes", fsize=1 << 20))    # 1 MB: the log and lock fit, the checkpoint not
    line = one_line_error(p, f"could not write {run / 'last.safetensors'}: File too large (EFBIG)",
                          "the previous last.safetensors is unchanged")
    assert p.returncode == 2 and "internal error" not in line
    assert (run / "last.safetensors").read_bytes() == before
    assert litter(run) == []


@pytest.mark.parametrize("command", ["evaluate", "extract"])
def test_a_full_disk_while_writing_metrics_or_features_is_one_line_naming_it(command, trained, data_root, tmp_path):
    target = tmp_path / ("metrics.json" if command == "evaluate" else "features.npz")
    p = finish(popen(command, *command_args(command, trained, data_root, target, target), fsize=64))
    # evaluate writes the metrics and their run information (runs/metrics.json) as one pair: either may hit the limit
    written = [target, tmp_path / "runs" / target.name] if command == "evaluate" else [target]
    line = one_line_error(p, "File too large (EFBIG)", f"no {target.name} was written")
    assert any(f"could not write {w}: " in line for w in written), line
    assert not any(w.exists() for w in written) and litter(tmp_path) == []


# 4. temporary folders -------------------------------------------------------------------------------------------------

def package_root() -> Path:
    "The repository whose `reid_nb` these tests import (its notebooks are the ones to run)."
    import reid_nb
    return Path(reid_nb.__file__).resolve().parents[1]


def repo_files(root: Path) -> set[str]:
    "Every file git sees in the repository, ignored ones included (a test that writes into it shows up here)."
    return set(subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.splitlines())


def test_a_notebook_leaves_no_temporary_folder(tmp_path):
    "25_runs (5 s; 01_backbone, which wrote ~0.8 GB a run, takes 20 s) with TMPDIR on an empty folder: empty after it."
    tmp, root = tmp_path / "tmp", package_root()
    tmp.mkdir()
    before = repo_files(root)
    env = dict(ENV, TMPDIR=str(tmp), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), MPLBACKEND="Agg")
    nbdev_test = Path(sys.executable).parent / "nbdev_test"
    p = subprocess.run([str(nbdev_test), "--path", "nbs/25_runs.ipynb"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(p.name for p in tmp.iterdir()) == []
    assert repo_files(root) == before
