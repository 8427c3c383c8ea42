"""Loss terms by name (issue 29, item 1): a run's objective is `losses: {name: weight}`; the circle loss is one entry of
the table; a term from the user's own file trains without editing the package; log.csv has one column per term."""
import csv
import json

from conftest import TINY, run_cli

FAST = [*TINY, "--width", "0.25", "--epochs", "1", "--max-batches", "2"]
HEAD, TAIL = ["epoch", "lr", "loss"], ["acc", "images", "seconds", "images_per_s"]


def _log(run):
    with open(run / "log.csv", newline="") as f: return list(csv.DictReader(f))


def _columns(run):
    with open(run / "log.csv", newline="") as f: return next(csv.reader(f))


def test_circle_variant_through_the_cli(data_root, tmp_path):
    run = tmp_path / "run"
    p = run_cli("train", *FAST, "--data-root", data_root, "--out", run,
                "--losses", "ce: 1, triplet: 1, circle: {weight: 0.5, m: 0.25, gamma: 64}")
    assert _columns(run) == HEAD + ["ce", "triplet", "circle"] + TAIL, _columns(run)
    row = _log(run)[-1]
    assert float(row["circle"]) > 0 and "circle" in p.stdout
    saved = json.loads((run / "config.json").read_text())["train_config"]["losses"]
    assert saved["circle"] == {"weight": 0.5, "m": 0.25, "gamma": 64.0}, saved
    assert saved["triplet"] == {"weight": 1.0, "margin": 0.3, "soft_margin": False}, saved


PARAMS = """datasets: [synthetic]
variants: [baseline, baseline_circle]
variant_defs:
  baseline_circle: {base: baseline, label: "Baseline + circle loss"}
train: {input_size: [64, 32], width: 0.25, epochs: 1, P: 4, K: 2, max_batches: 2, warmup_epochs: 1, num_workers: 0,
        losses: {ce: {weight: 1, label_smoothing: 0.1}, triplet: {weight: 1, margin: 0.3}}}
overrides:
  baseline_circle: {losses: {ce: 1, triplet: 1, circle: {weight: 1, m: 0.25, gamma: 32}}}
"""


def test_circle_variant_declared_in_params(data_root, tmp_path):
    "A declared variant whose override sets `losses`: its run has the circle column, the base variant's does not."
    (tmp_path / "params.yaml").write_text(PARAMS)
    for v in ("baseline_circle", "baseline"):
        run_cli("train", "--params", "params.yaml", "--variant", v, "--dataset", "synthetic", "--data-root", data_root,
                "--out", tmp_path / v, "--no-progress", cwd=tmp_path)
    assert _columns(tmp_path / "baseline_circle") == HEAD + ["ce", "triplet", "circle"] + TAIL
    assert _columns(tmp_path / "baseline") == HEAD + ["ce", "triplet"] + TAIL
    cfg = json.loads((tmp_path / "baseline_circle" / "config.json").read_text())
    assert cfg["variant"] == "baseline_circle" and cfg["train_config"]["losses"]["circle"]["gamma"] == 32.0


USER_LOSSES = '''import torch
from torch import nn


def spread(logits, feat, pids, scale: float = 1.0):
    "Mean squared feature value: keeps the features small."
    return scale * feat.pow(2).mean()


class Prototype(nn.Module):
    "A learned prototype per identity (a term with parameters): squared distance of each feature to its own."
    def __init__(self, num_classes, feat_dim, power: int = 2):
        super().__init__()
        self.protos, self.power = nn.Parameter(torch.zeros(num_classes, feat_dim)), power

    def forward(self, logits, feat, pids):
        return (feat - self.protos[pids]).abs().pow(self.power).sum(1).mean()
'''


def test_a_loss_term_from_the_users_own_file_trains(data_root, tmp_path):
    "`file.py:function` and `file.py:Class` in `losses` train with the package untouched; log.csv names them."
    (tmp_path / "my_losses.py").write_text(USER_LOSSES)
    run = tmp_path / "run"
    p = run_cli("train", *FAST, "--data-root", data_root, "--out", run, "--losses",
                "ce: 1, triplet: 1, 'my_losses.py:spread': {weight: 0.1, scale: 2}, 'my_losses.py:Prototype': 0.01",
                cwd=tmp_path)
    cols = _columns(run)
    assert cols == HEAD + ["ce", "triplet", "my_losses.py:spread", "my_losses.py:Prototype"] + TAIL, cols
    row = _log(run)[-1]
    assert float(row["my_losses.py:spread"]) > 0 and float(row["my_losses.py:Prototype"]) > 0, row
    assert "my_losses.py:spread" in p.stdout
    from safetensors import safe_open
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:      # the term's parameters are checkpointed
        assert any(k.startswith("criterion.") and k.endswith("protos") for k in f.keys()), list(f.keys())[:5]


def test_bad_loss_settings_are_one_line_naming_the_key(data_root, tmp_path):
    for spec, needle in [("ce: 1, focal: 1", "losses: unknown loss term 'focal'; known: ce, triplet, center, circle"),
                         ("ce: 1, circle: {gamma: -2}", "losses.circle.gamma=-2.0: expected a positive scale factor"),
                         ("ce: 1, 'missing.py:f': 1", "losses: loss term 'missing.py:f': no file missing.py")]:
        p = run_cli("train", *FAST, "--data-root", data_root, "--out", tmp_path / "r", "--losses", spec,
                    cwd=tmp_path, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], (p.returncode, p.stderr[-1500:])
    assert not (tmp_path / "r").exists()
