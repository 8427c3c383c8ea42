"""The training/evaluation engine through its command line: train, evaluate, kill + resume, NaN, DDP, bad input."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, run_cli


def test_help_lists_commands():
    out = run_cli("--help").stdout
    for cmd in ("train", "evaluate", "synth", "download", "variants"):
        assert cmd in out
    out = run_cli("train", "--help").stdout
    for opt in ("--variant", "--resume", "--input-size", "--params", "--device", "--amp"):
        assert opt in out


@pytest.mark.parametrize("args, message", [
    (["train", "--variant", "resnet152"], "known variants: baseline"),
    (["train", "--variant", "full", "--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["evaluate", "--run", "no/such/run"], "missing"),
    (["train", "--variant", "full", "--dataset", "market1501", "--data-root", "no/such/root"], "market1501"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    p = run_cli(*args, check=False, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []          # a refused command leaves nothing behind (no empty runs/<variant>-<dataset>)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda(data_root):
    p = run_cli("train", *TINY, "--data-root", data_root, "--device", "cuda", "--out", data_root / "x", check=False)
    assert p.returncode == 2 and "CUDA is not available" in p.stderr, p.stderr


def test_train_then_evaluate(data_root, tmp_path):
    run = tmp_path / "run"
    run_cli("train", *TINY, "--data-root", data_root, "--out", run, "--epochs", "2", "--max-batches", "3")
    for f in ("model.safetensors", "config.json", "log.csv", "last.safetensors", "train_summary.json"):
        assert (run / f).is_file(), f
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,lr,loss") and len(rows) == 3
    p = run_cli("evaluate", "--run", run, "--data-root", data_root, "--metrics", tmp_path / "m.json",
                "--ranking", tmp_path / "r.json", "--no-progress", "--batch-size", "64")
    m = json.loads((tmp_path / "m.json").read_text())                  # the metrics alone
    info = json.loads((tmp_path / "runs" / "m.json").read_text())       # beside them: what made them
    assert 0 <= m["mAP"] <= 1 and 0 <= m["rank1"] <= 1 and "rerank" in m and "cmc" not in m and "variant" not in m
    assert info["variant"] == "baseline" and info["dataset"] == "synthetic" and len(info["cmc"]) == 50
    r = json.loads((tmp_path / "r.json").read_text())
    assert len(r["topk"]) == len(r["query"]) == info["num_query"] and len(r["topk"][0]) == 10
    assert "mAP" in p.stdout
    # a checkpoint of another variant is refused when resuming
    p = run_cli("train", *TINY, "--data-root", data_root, "--out", run, "--epochs", "3", "--resume", "--variant", "sam", check=False)
    assert p.returncode == 2 and "for variant 'baseline', not 'sam'" in p.stderr, p.stderr


def _ckpt_position(path):
    from reid_nb.runs import read_checkpoint
    try:
        _, meta = read_checkpoint(path)
    except (FileNotFoundError, ValueError):
        return None
    return meta["epoch"], meta["batch"]


def test_kill_and_resume_reaches_the_same_weights(data_root, tmp_path):
    args = [*TINY, "--data-root", data_root, "--epochs", "2", "--max-batches", "6", "--ckpt-every", "1", "--seed", "3"]
    run_cli("train", *args, "--out", tmp_path / "straight")
    # the same run, killed mid-epoch (after the 3rd batch of the second epoch was checkpointed), then resumed
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.Popen([sys.executable, "-m", "reid_nb.cli", "train", *map(str, args), "--out", str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, deadline = tmp_path / "killed" / "last.safetensors", time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        pos = _ckpt_position(ckpt)
        if pos is not None and pos >= (1, 3): break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL); proc.wait()
    pos = _ckpt_position(ckpt)
    assert pos is not None and (1, 3) <= pos < (2, 0), pos
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    p = run_cli("train", *args, "--out", tmp_path / "killed", "--resume")
    assert "resuming" in p.stdout
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "straight" / "log.csv").read_text().count("\n") == (tmp_path / "killed" / "log.csv").read_text().count("\n")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    from reid_nb import train as T
    from reid_nb.step import NonFiniteLoss
    from reid_nb.losses import ReIDLoss
    calls = {"n": 0}
    orig = ReIDLoss.forward

    def poisoned(self, logits, feat, pids):
        loss, parts = orig(self, logits, feat, pids)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 4 else loss), parts
    monkeypatch.setattr(ReIDLoss, "forward", poisoned)
    cfg = T.TrainConfig(variant="baseline", dataset="synthetic", data_root=str(data_root), out=str(tmp_path / "nan"),
                        input_size=(64, 32), P=4, K=2, num_workers=0, epochs=1, max_batches=6, ckpt_every=1)
    with pytest.raises(NonFiniteLoss, match="non-finite loss .* batch 4"):
        T.fit(cfg, progress=False)
    from reid_nb.runs import read_checkpoint
    tensors, meta = read_checkpoint(tmp_path / "nan" / "last.safetensors")
    assert (meta["epoch"], meta["batch"]) == (0, 3)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_host_reads_do_not_grow_with_the_number_of_steps(data_root, tmp_path):
    "The resident training loop reads the device only at log intervals and epoch ends: 4 or 12 batches, the same reads."
    from reid_nb import train as T
    from reid_nb.step import HostReads

    def reads(batches, log_every):
        cfg = T.TrainConfig(variant="full", dataset="synthetic", data_root=str(data_root), out=str(tmp_path / f"r{batches}-{log_every}"),
                            input_size=(64, 32), width=0.25, P=4, K=2, epochs=1, max_batches=batches, data_path="resident",
                            log_every=log_every, device="cpu")
        with HostReads() as h:
            T.fit(cfg, progress=False)
        return h.count

    few, many = reads(4, 100), reads(12, 100)
    assert few == many, (few, many)
    every_step = reads(12, 1)                     # a read at every step (the progress bar) shows up in the count
    assert every_step > many, (every_step, many)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes(data_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "reid_nb.cli", "train", *map(str, TINY), "--data-root", str(data_root), "--out", str(out),
           "--epochs", "1", "--max-batches", "3", "--device", "cpu", "--record-ranks"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    r0, r1 = (json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["params_sha256"] == r1["params_sha256"]            # trained together: identical parameters
    s0, s1 = set(r0["seen"]["0"]), set(r1["seen"]["0"])
    assert s0 and s1 and not (s0 & s1)                           # each sample seen by one rank only
    assert (out / "model.safetensors").is_file()
    # evaluation under torchrun: each rank extracts half of the features, gathered in order; same metrics as one process
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "reid_nb.cli", "evaluate", "--run-dir", str(out), "--data-root", str(data_root), "--metrics", str(tmp_path / "m2.json"),
           "--no-progress", "--device", "cpu"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    run_cli("evaluate", "--run", out, "--data-root", data_root, "--metrics", tmp_path / "m1.json", "--no-progress", "--device", "cpu")
    m1, m2 = (json.loads((tmp_path / f"m{k}.json").read_text()) for k in (1, 2))
    for k in ("mAP", "rank1", "mINP"):
        assert abs(m1[k] - m2[k]) < 2e-3 and abs(m1["rerank"][k] - m2["rerank"][k]) < 2e-3, (k, m1[k], m2[k])   # batch composition: float rounding only


# Measured on 2 CPU cores with params.yaml's CPU profile (width 0.25, 64x32, 32 epochs, ~45 s): the
# `full` variant reaches mAP 57.9% (R1 65.8%) on the synthetic set with seed 0, 57.5-62.6% over seeds 0-2, random
# distances about 2%; the threshold keeps a margin of ~40% below the lowest (a CPU run is deterministic for a given torch
# build and thread count).
FULL_MAP_THRESHOLD = 0.35


def test_full_variant_learns(data_root, tmp_path):
    "FSAFC-Net's method, trained with the CPU profile's recipe on the embedded dataset, ranks far better than chance."
    import numpy as np
    from reid_nb.data import load_dataset
    from reid_nb.metrics import evaluate_rank
    ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
    run = tmp_path / "full"
    run_cli("train", "--params", ROOT / "params.yaml", "--variant", "full", "--dataset", "synthetic",
            "--data-root", data_root, "--out", run, "--no-progress")
    run_cli("evaluate", "--run", run, "--data-root", data_root, "--metrics", tmp_path / "m.json", "--no-rerank", "--no-progress")
    m = json.loads((tmp_path / "m.json").read_text())
    ds = load_dataset("synthetic", data_root)
    qp, gp = np.array([r.pid for r in ds.query]), np.array([r.pid for r in ds.gallery])
    qc, gc = np.array([r.camid for r in ds.query]), np.array([r.camid for r in ds.gallery])
    rng = np.random.default_rng(0)
    chance = np.mean([evaluate_rank(rng.random((len(qp), len(gp))), qp, gp, qc, gc)["mAP"] for _ in range(5)])
    assert m["mAP"] >= FULL_MAP_THRESHOLD, (m["mAP"], chance)
    assert m["mAP"] >= 10 * chance, (m["mAP"], chance)
