"""Nothing lost, nothing silently wrong: each case a careless user (or a hostile file) can cause, through the command line
where a user meets it. A checkpoint named as good is good and resumes; a run folder holds one run (refused, locked, replaced only
when asked); a resume that would change the model is refused or recorded; a killed `dvc repro` resumes; DVC sees changed images
and training names them; params mistakes and degenerate values are refused by name; every error is one line, never a traceback."""
import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import TINY, ROOT, fresh_copy, run_cli

SHORT = ["--epochs", "1", "--max-batches", "2"]


def cli(*args):
    """`reid-nb ARGS` run in this process: the console script's `main`, with its output captured. (Starting a process costs ~7 s of
    imports; the cases that need a real process, such as a kill or a lock held by another one, use `run_cli`.)"""
    from reid_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def one_line_error(p, *needles):
    "The command failed with one message naming `needles`, and no traceback anywhere in its output."
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "Traceback" not in out, out
    err = [l for l in p.stderr.splitlines() if "error:" in l]
    assert len(err) == 1, p.stderr
    for n in needles: assert str(n) in err[0], (n, err[0])
    return err[0]


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


@pytest.fixture
def data_copy(data_root, tmp_path):
    "A copy of the session's synthetic data root, to damage."
    dst = tmp_path / "data"
    shutil.copytree(data_root, dst, symlinks=True)
    return dst


def first_train_image(root: Path) -> Path:
    return sorted((root / "synthetic" / "bounding_box_train").glob("*.png"))[0]


# 1. the last good checkpoint is good ------------------------------------------------------------------------------------------

def test_lr_inf_stops_naming_a_checkpoint_that_resumes(data_root, tmp_path):
    "A rate of 1e300 (finite, so in range; inf itself is refused by params' ranges): Adam's first step overflows float32, warm-up or not."
    from reid_nb.runs import read_checkpoint
    out = tmp_path / "inf"
    args = [*TINY, "--data-root", data_root, "--out", out, "--epochs", "2", "--max-batches", "4", "--ckpt-every", "1"]
    p = run_cli("train", *args, "--lr", "1e300", check=False)
    one_line_error(p, "non-finite weights in epoch 1, after batch 1", f"the last good checkpoint is {out / 'last.safetensors'} (epoch 0, batch 0)")
    tensors, meta = read_checkpoint(out / "last.safetensors")
    assert (meta["epoch"], meta["batch"]) == (0, 0)
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    p = cli("train", *args, "--lr", "1e300", "--resume")                           # it loads and resumes (and diverges the same way)
    assert "resuming" in p.stdout and "at epoch 0, batch 0" in p.stdout, p.stdout
    one_line_error(p, "non-finite weights in epoch 1, after batch 1")
    one_line_error(cli("train", *args, "--lr", "0.001", "--resume"), "lr: 1e+300 → 0.001", "--allow-changes")
    p = cli("train", *args, "--lr", "0.001", "--resume", "--allow-changes")         # continued with a sane rate, the change recorded
    assert p.returncode == 0, p.stderr
    assert "with changed settings (lr: 1e+300 → 0.001)" in p.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_config"]["lr"] == 0.001
    assert cfg["history"] == [dict(epoch=0, batch=0, changed={"lr": [1e300, 0.001]})]


def test_a_loss_that_explodes_with_finite_weights_stops_the_run(data_root, tmp_path, monkeypatch):
    from reid_nb import train as T
    from reid_nb.runs import read_meta
    from reid_nb.step import NonFiniteLoss
    from reid_nb.losses import ReIDLoss
    calls = {"n": 0}
    orig = ReIDLoss.forward

    def exploding(self, logits, feat, pids):
        loss, parts = orig(self, logits, feat, pids)
        calls["n"] += 1
        return (loss * 1e14 if calls["n"] >= 3 else loss), parts
    monkeypatch.setattr(ReIDLoss, "forward", exploding)
    cfg = T.TrainConfig(variant="baseline", dataset="synthetic", data_root=str(data_root), out=str(tmp_path / "boom"),
                        input_size=(64, 32), P=4, K=2, num_workers=0, epochs=1, max_batches=5, ckpt_every=1)
    with pytest.raises(NonFiniteLoss, match=r"the loss diverged: .* at epoch 1, batch 3, more than 1000× the run's first loss"):
        T.fit(cfg, progress=False)
    assert (read_meta(tmp_path / "boom" / "last.safetensors")["batch"]) == 2


# 2. a run folder holds one run ------------------------------------------------------------------------------------------------

def test_a_second_train_into_a_run_is_refused_unless_overwrite(data_root, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--data-root", data_root, "--out", out, *SHORT]
    assert cli("train", *args).returncode == 0
    first = (out / "model.safetensors").read_bytes()
    one_line_error(run_cli("train", *args, "--seed", "1", check=False),
                   f"{out} already holds a run (last.safetensors, model.safetensors, config.json, log.csv, train_summary.json",
                   "pass --resume to continue it, or --overwrite to replace it")
    assert (out / "model.safetensors").read_bytes() == first                   # nothing touched
    p = cli("train", *args, "--seed", "1", "--overwrite")
    assert p.returncode == 0 and "--overwrite: removed the previous run's last.safetensors" in p.stdout
    assert json.loads((out / "config.json").read_text())["train_config"]["seed"] == 1
    assert (out / "model.safetensors").read_bytes() != first


def test_two_trainings_cannot_share_a_folder_and_a_killed_ones_lock_and_litter_go(data_root, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "reid_nb.cli", "train", *map(str, TINY), "--data-root", str(data_root), "--out", str(out),
                             "--epochs", "50", "--ckpt-every", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "last.safetensors").exists() and proc.poll() is None: time.sleep(0.1)
        assert proc.poll() is None and (out / ".reid_nb.lock").exists()
        one_line_error(cli("train", *TINY, "--data-root", data_root, "--out", out, *SHORT, "--resume"), f"{out} is in use by PID {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    assert (out / ".reid_nb.lock").exists()                                   # kill -9 leaves the lock ...
    (out / f".last.safetensors.tmp{proc.pid}").write_bytes(b"\0" * 4096)      # ... and, killed mid-write, a temporary checkpoint
    p = cli("train", *TINY, "--data-root", data_root, "--out", out, *SHORT, "--overwrite")
    assert p.returncode == 0 and f"taking over a stale lock of PID {proc.pid}" in p.stderr
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == []     # lock released, the orphan removed


# 3. resume keeps config.json true ---------------------------------------------------------------------------------------------

def test_resume_refuses_a_setting_that_changes_the_model(data_root, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--data-root", data_root, "--out", out, *SHORT, "--ckpt-every", "1"]
    assert cli("train", *args).returncode == 0
    for opt, val, shown in [("--seed", "5", "seed: 0 → 5"), ("--P", "2", "P: 4 → 2"), ("--lr", "0.01", "lr: 0.00035 → 0.01"),
                            ("--milestones", "9", "milestones: [40, 70] → [9]")]:
        one_line_error(cli("train", *args, opt, val, "--resume"), shown, "--overwrite", "--allow-changes")
    p = cli("train", *args, "--resume", "--num-workers", "1")              # where and how fast, not what: no change
    assert "resuming" in p.stdout and json.loads((out / "config.json").read_text())["history"] == []


# 4. a killed `dvc repro` resumes; 5. DVC sees changed images ------------------------------------------------------------------

def sh(*cmd, cwd, check=True, timeout=1200, popen=False):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    p = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0: raise AssertionError(f"{cmd} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    "A fresh copy of the repository with a one-variant, one-seed tiny profile, its data stage run."
    repo = fresh_copy(tmp_path_factory.mktemp("pipe"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(variants=["baseline"], seeds=[0])
    params["overrides"] = {"baseline": {}}
    params["train"].update(input_size=[64, 32], epochs=2, warmup_epochs=1, milestones=[1], P=4, K=2, max_batches=8, ckpt_every=1,
                           num_workers=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(sys.executable, "-m", "dvc", "repro", "data@synthetic", cwd=repo)
    return repo


def test_a_killed_dvc_repro_resumes_the_interrupted_run(pipe):
    from reid_nb.runs import read_meta
    from safetensors.torch import load_file
    run, stage = pipe / "runs" / "baseline-synthetic-s0", "train@baseline-synthetic-0"
    proc = sh(sys.executable, "-m", "dvc", "repro", stage, cwd=pipe, popen=True)
    deadline, pos = time.time() + 600, None
    try:
        while time.time() < deadline and proc.poll() is None:
            try: pos = (lambda m: (m["epoch"], m["batch"]))(read_meta(run / "last.safetensors"))
            except (FileNotFoundError, ValueError): pos = None
            if pos is not None and pos >= (1, 3): break
            time.sleep(0.05)
        assert proc.poll() is None, "the stage finished before it could be killed:\n" + proc.stdout.read()
    finally:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait()                       # dvc and its reid-nb train, as a power cut would
    pos = (lambda m: (m["epoch"], m["batch"]))(read_meta(run / "last.safetensors"))
    assert (1, 3) <= pos < (2, 0) and not (run / "model.safetensors").exists(), pos
    p = sh(sys.executable, "-m", "dvc", "repro", stage, cwd=pipe)
    assert f"resuming runs/baseline-synthetic-s0/last.safetensors at epoch {pos[0]}, batch {pos[1]}" in p.stdout, p.stdout
    # the same stage's command, uninterrupted, in another folder: the same weights
    cmd = yaml.safe_load((pipe / "dvc.lock").read_text())["stages"][stage]["cmd"].replace("runs/baseline-synthetic-s0", "runs/straight")
    sh(*cmd.split(), cwd=pipe)
    a, b = load_file(str(run / "model.safetensors")), load_file(str(pipe / "runs" / "straight" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "Data and pipelines are up to date" in sh(sys.executable, "-m", "dvc", "repro", stage, cwd=pipe).stdout


def test_dvc_sees_changed_images_and_training_names_them(pipe):
    status = lambda: json.loads(sh(sys.executable, "-m", "dvc", "status", "--json", "data@synthetic", cwd=pipe).stdout or "{}")
    assert status() == {}
    train_dir = pipe / "data" / "synthetic" / "bounding_box_train"
    a, b = sorted(train_dir.glob("*.png"))[:2]
    backup = tmp = pipe / "backup"; tmp.mkdir()
    shutil.copy2(a, tmp / a.name); shutil.copy2(b, tmp / b.name)
    a.write_bytes(b.read_bytes()); b.unlink()                                   # one image overwritten, another deleted
    assert "data@synthetic" in status()                                         # DVC sees it
    p = cli("train", "--params", pipe / "params.yaml", "--variant", "baseline", "--data-root", pipe / "data",
            "--manifest", pipe / "manifests" / "synthetic.json", "--out", pipe / "runs" / "x", "--no-progress")
    one_line_error(p, f"train/bounding_box_train/{a.name}: differs from {pipe / 'manifests' / 'synthetic.json'}", "run it again")
    shutil.copy2(backup / a.name, a); shutil.copy2(backup / b.name, b)           # restored: clean again
    assert status() == {}


# 6. the resident cache: every image at the input size, the classic path's batch ----------------------------------------------

def test_resident_cache_of_mixed_sizes_gives_the_classic_batch(tmp_path):
    import numpy as np
    from reid_nb.data import Record
    from reid_nb.sampler import PKSampler
    from reid_nb.train import TrainConfig
    from reid_nb.loader import TrainBatches
    rng, recs = np.random.default_rng(0), []
    for i, (h, w) in enumerate([(16, 8), (128, 64), (300, 120), (97, 41), (128, 64), (64, 32), (200, 90), (150, 70)]):
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([255 * y / h, 255 * x / w, 128 + 60 * np.sin(y / 7.0)], -1) + rng.normal(0, 8, (h, w, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tmp_path / f"{i // 2 + 1:04d}_c1_f{i:07d}.png")
        recs.append(Record(str(tmp_path / f"{i // 2 + 1:04d}_c1_f{i:07d}.png"), i // 2, 0))
    cfg = TrainConfig(variant="baseline", input_size=(64, 32), P=2, K=2, flip_p=0, pad=0, erase_p=0, num_workers=0)
    batches = {p: TrainBatches(recs, PKSampler([r.pid for r in recs], P=2, K=2, seed=0), cfg, torch.device("cpu"), p) for p in ("resident", "classic")}
    assert tuple(batches["resident"].cache.shape) == (8, 3, 64, 32)           # the input size, never the first image's 16×8
    for (xr, yr, ir), (xc, yc, ic) in zip(batches["resident"](0), batches["classic"](0)):
        assert ir == ic and torch.equal(yr, yc)
        assert (xr - xc).abs().max() <= 2.5 / 255 / 0.224, (xr - xc).abs().max()   # within two 8-bit levels of resize rounding


# 7. params: typos and degenerate values refused by name ----------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("trian: {epochs: 3}\n", "unknown section(s) in"),
    ("overrides: {fulll: {lr: 0.1}}\n", "unknown variant(s) under overrides"),
    ("train: {deterministic: 'no'}\n", "deterministic='no': expected true or false"),
    ("train: {epochs: three}\n", "epochs='three': expected an integer"),
    ("train: {epochs: [3\n", "not valid YAML"),
    ("train: {gamma: -1}\n", "gamma=-1.0: expected a positive factor"),
])
def test_params_mistakes_are_refused(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    one_line_error(cli("train", "--params", tmp_path / "p.yaml", "--variant", "full", "--out", tmp_path / "r"), message)
    assert not (tmp_path / "r").exists()


def test_numbers_written_as_strings_are_read_as_numbers(tmp_path):
    from reid_nb.cli import build_parser, train_config_from_args
    (tmp_path / "p.yaml").write_text("train: {epochs: '3', lr: 1e-3}\n")       # PyYAML reads 1e-3 as a string
    cfg = train_config_from_args(build_parser("train").parse_args(["train", "--params", str(tmp_path / "p.yaml")]))
    assert (cfg.epochs, cfg.lr) == (3, 0.001)


@pytest.mark.parametrize("args, message", [
    (["train", "--gamma", "-1"], "gamma=-1.0: expected a positive factor"),
    (["train", "--max-batches", "-1"], "max_batches=-1: expected an integer ≥ 0 (0: the full epoch)"),
    (["train", "--P", "1"], "P=1: the batch-hard triplet loss needs at least 2 identities"),
    (["evaluate", "--run", "r", "--topk", "-1"], "evaluate.topk=-1: expected a positive integer"),
    (["evaluate", "--run", "r", "--batch-size", "0"], "evaluate.batch_size=0: expected a positive integer"),
])
def test_degenerate_values_are_refused(args, message, tmp_path):
    one_line_error(cli(*[tmp_path / a if a == "r" else a for a in args]), message)


# 8. no tracebacks --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot read image"), ("empty", "cannot read image"), ("dangling link", "No such file"), ("bomb", "more than MAX_PIXELS"),
])
def test_a_bad_image_is_one_line_in_training_and_refused_by_the_data_stage(data_copy, tmp_path, damage, message):
    img = first_train_image(data_copy)
    if damage == "truncate": img.write_bytes(img.read_bytes()[:100])
    elif damage == "empty": img.write_bytes(b"")
    elif damage == "dangling link": img.unlink(); img.symlink_to(tmp_path / "gone.png")
    else: Image.new("1", (9000, 9000)).save(img, "PNG")                        # 81 M pixels in a few kB
    one_line_error(cli("train", *TINY, "--data-root", data_copy, "--out", tmp_path / "r", *SHORT, "--data-path", "resident"), img, message)
    p = cli("prepare", "synthetic", "--root", data_copy, "--manifest", tmp_path / "m.json")
    one_line_error(p, "1 of", "images cannot be read", img)
    assert not (tmp_path / "m.json").exists()


def test_file_and_run_mistakes_are_one_line(data_root, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY, "--data-root", data_root, "--out", run, *SHORT).returncode == 0
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(cfg, variant="full")))   # relabelled by hand: refused
    one_line_error(cli("evaluate", "--run", run, "--data-root", data_root), "says variant 'full', but its model_config")
    (run / "config.json").write_text(json.dumps(cfg))
    w = (run / "model.safetensors").read_bytes(); (run / "model.safetensors").write_bytes(w[: len(w) // 2])
    one_line_error(cli("evaluate", "--run", run, "--data-root", data_root), "model.safetensors: not a readable safetensors file")
    (tmp_path / "afile").write_text("x")
    one_line_error(cli("train", *TINY, "--data-root", data_root, "--out", tmp_path / "afile", *SHORT), "exists and is not a folder")


def test_synth_force_regenerates_only_a_synthetic_folder(data_copy):
    img = first_train_image(data_copy).read_bytes()
    first_train_image(data_copy).write_bytes(b"edited")
    assert "keeping it" in cli("synth", "--root", data_copy / "synthetic").stdout
    assert "wrote" in cli("synth", "--root", data_copy / "synthetic", "--force").stdout
    assert first_train_image(data_copy).read_bytes() == img
    (data_copy / "mine").mkdir(); (data_copy / "mine" / "thesis.tex").write_text("years of work")
    one_line_error(cli("synth", "--root", data_copy / "mine", "--force"), "no synthetic.json); refusing to replace it")
    assert (data_copy / "mine" / "thesis.tex").exists()


# 9. archives, orphans, set-aside copies, the synthetic set's marker --------------------------------------------------------

def test_archives_bombs_orphans_and_bad_copies(tmp_path):
    import hashlib, zipfile
    from reid_nb.releases import make_archive
    arc, md5 = make_archive("market1501", tmp_path / "made")
    root = tmp_path / "data"; root.mkdir()
    bomb = tmp_path / "Market-1501-v15.09.15.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4): zf.writestr(f"Market-1501-v15.09.15/query/{i:04d}_c1s1_000001_00.jpg", bytes(2 * 2**20))
    one_line_error(cli("prepare", "market1501", "--root", root, "--archive", bomb, "--md5", hashlib.md5(bomb.read_bytes()).hexdigest()), "more than the limit of 200× (max_ratio; a zip bomb?)")
    assert sorted(p.name for p in root.iterdir()) == []                         # nothing extracted
    for i, n in enumerate((1, 2)):                                             # two different bad copies: both kept aside
        bad = tmp_path / "copy.zip"; data = bytearray(arc.read_bytes()); data[1000 + i] ^= 0xFF; bad.write_bytes(bytes(data))
        one_line_error(cli("prepare", "market1501", "--root", root, "--archive", bad, "--md5", md5), "kept aside")
    assert sorted(p.name for p in tmp_path.glob("copy.zip.bad*")) == ["copy.zip.bad", "copy.zip.bad.1"]
    orphan = root / f".market1501.x1y2z3.tmp{dead_pid()}"                      # a killed extraction's staging folder
    (orphan / "Market-1501-v15.09.15").mkdir(parents=True)
    assert cli("prepare", "market1501", "--root", root, "--archive", arc, "--md5", md5).returncode == 0
    assert sorted(p.name for p in root.iterdir()) == ["market1501"]


def test_prepare_synthetic_refuses_a_folder_it_did_not_make(data_copy):
    (data_copy / "synthetic" / "synthetic.json").unlink()
    one_line_error(cli("prepare", "synthetic", "--root", data_copy), "not one that reid_nb generated (no synthetic.json)")


_FINGERPRINT = """
import sys
from pathlib import Path
from reid_nb.synthetic import make_synthetic
from reid_nb.data import load_dataset
from reid_nb.manifest import image_hashes, fingerprint_of
make_synthetic(Path(sys.argv[1]) / "synthetic", seed=0, num_train_ids=6, num_test_ids=4, num_distractors=4)
print(fingerprint_of(image_hashes(load_dataset("synthetic", sys.argv[1]))))   # the data stage's fingerprint
"""


def test_the_synthetic_dataset_is_the_same_bytes_whichever_simd_kernels_numpy_picks(tmp_path):
    """The same seed must give the same images on every machine: numpy picks AVX2 or AVX-512 kernels at run time (a vectorised `**`
    differed in the last bit between them and moved pixels, so the data's fingerprint and every metric depended on the CPU)."""
    from reid_nb.provenance import simd_levels
    off = (simd_levels()["numpy"] or "").split()                             # the optional kernels this CPU would use
    if not off: pytest.skip("this CPU runs numpy's baseline kernels only: nothing to switch off")
    prints = {}
    for name, env in (("all kernels", {}), ("baseline kernels", {"NPY_DISABLE_CPU_FEATURES": " ".join(off)})):
        r = subprocess.run([sys.executable, "-c", _FINGERPRINT, str(tmp_path / name.replace(" ", "_"))], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=300)
        assert r.returncode == 0, r.stderr
        prints[name] = r.stdout.strip()
    assert prints["all kernels"] == prints["baseline kernels"], f"with {' '.join(off)} switched off the images differ: {prints}"
