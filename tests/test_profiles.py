"""The pipeline's profiles agree with the code and with each other: every key of params.yaml, params-paper.yaml and
params-rehearsal.yaml is one the code reads, every variant and dataset exists, and the rehearsal profile differs from the
paper profile in scale only. `reid-nb profile` turns one profile into another with exactly that profile's parameters."""
from pathlib import Path

import pytest
import yaml

from reid_nb.cli import load_params
from reid_nb.pipeline import _leaves, profile_command
from reid_nb.data import DATASETS
from reid_nb.models import VARIANTS
from reid_nb.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["params.yaml", "params-paper.yaml", "params-rehearsal.yaml"]
EVALUATE_KEYS = {"rerank", "flip", "metric", "topk", "device", "batch_size", "num_workers", "data_path"}
# What "only the scale changed" may touch: the data (local archives, their own root), the run length and size, the device.
SCALE_KEYS = {"profile", "variants", "seeds", "eval_datasets", "data.root", "train.epochs", "train.P", "train.device", "train.pretrained",
              "train.num_workers", "evaluate.batch_size"}


def read(name): return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_consistent_with_the_code(name):
    doc = read(name)
    assert set(doc) <= {"profile", "datasets", "eval_datasets", "variants", "variant_defs", "seeds", "data", "train", "overrides",
                        "evaluate"}, sorted(doc)
    assert doc["variant_defs"] == {}, "a committed profile declares no variants of its own (each would add trainings)"
    seeds = doc["seeds"]                # the pipeline's matrix: each stage passes its own --seed, which wins over any other
    assert isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds) and len(set(seeds)) == len(seeds), seeds
    assert "seed" not in doc["train"] and not any("seed" in (o or {}) for o in doc["overrides"].values()), \
        "a seed under train or overrides would be ignored: the seeds list sets it"
    assert set(doc["variants"]) <= set(VARIANTS) and doc["variants"]
    assert set(doc["datasets"]) <= set(DATASETS) and doc["datasets"]
    assert set(doc["overrides"]) == set(doc["variants"]), "one overrides entry per variant, and none for others"
    assert set(doc["evaluate"]) <= EVALUATE_KEYS, sorted(set(doc["evaluate"]) - EVALUATE_KEYS)
    assert set(doc["data"]) <= {"root", "synthetic_seed", "archives"}
    for name_, a in (doc["data"].get("archives") or {}).items():
        assert name_ in doc["datasets"] and set(a) == {"file", "md5"} and len(str(a["md5"])) == 32
    for v in doc["variants"]:           # every (train + override) set is a valid TrainConfig, with the pretrained/width rule
        cfg = TrainConfig.from_dict(dict(load_params(ROOT / name, v), variant=v))
        assert cfg.pretrained is None or cfg.width == 1


def test_rehearsal_differs_from_the_paper_in_scale_only():
    paper, reh = _leaves(read("params-paper.yaml")), _leaves(read("params-rehearsal.yaml"))
    changed = {k for k in set(paper) | set(reh) if paper.get(k) != reh.get(k)}
    changed -= {k for k in changed if k.startswith("data.archives.")}           # the declared local archives
    changed -= {f"overrides.{v}" for v in set(read("params-paper.yaml")["variants"]) - set(read("params-rehearsal.yaml")["variants"])}
    assert changed <= SCALE_KEYS, sorted(changed - SCALE_KEYS)
    assert reh["train.input_size"] == [256, 128] and reh["train.width"] == 1.0 and reh["datasets"] == ["market1501", "dukemtmc"]
    covered = {VARIANTS[v]["backbone"] for v in read("params-rehearsal.yaml")["variants"]}
    parts = {k for v in read("params-rehearsal.yaml")["variants"] for k in ("mhsa", "channel_attn", "fusion", "relation_attn")
             if VARIANTS[v][k] not in ((), [], "none")}
    assert covered == {"resnet50_ibn_a", "resnet50"} and parts == {"mhsa", "channel_attn", "fusion", "relation_attn"}


def test_profile_command_sets_every_value(tmp_path):
    cmd = profile_command("rehearsal", current=ROOT / "params.yaml")
    assert cmd[:5] == ["dvc", "exp", "run", "-n", "rehearsal"]
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-S"]
    assert "++train.pretrained='data/rehearsal/weights/{backbone}.pth'" in sets and "++train.device='cpu'" in sets
    assert "~train.data_path" in sets and "~overrides.sam" in sets         # keys the rehearsal lacks are removed
    assert profile_command(ROOT / "params.yaml", current=ROOT / "params.yaml")[5:] == []   # same profile: nothing to set
    with pytest.raises(FileNotFoundError, match="no such profile; known here: .*paper"):
        profile_command("papr", current=ROOT / "params.yaml")
