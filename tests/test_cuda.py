"""What only a GPU can check: bf16 autocast against fp32, channels_last, torch.compile, the resident data path against the
classic one, and evaluation / re-ranking on the device against the CPU. Every test carries `@pytest.mark.cuda` and is
skipped without CUDA; `.ci/gpu` runs them (`pytest -m cuda`) on a GPU machine. `REID_NB_TEST_DEVICE=cpu pytest -m cuda`
runs the same code on the CPU (slowly), to check the tests themselves where no GPU is at hand."""
import os

import numpy as np
import pytest
import torch

from reid_nb.models import build_model
from reid_nb.losses import ReIDLoss
from reid_nb.metrics import compute_distance, evaluate_rank
from reid_nb.rerank import re_ranking
from reid_nb.bench import eval_problem

DEV = torch.device(os.environ.get("REID_NB_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEV.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]


def batch(n_ids=8, k=4, size=(256, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_ids * k, 3, *size, generator=g).to(DEV), torch.arange(n_ids).repeat_interleave(k).to(DEV)


def forward_backward(model, crit, x, y, dtype=None):
    "(loss, pooled features, classifier gradient) of one training step's forward and backward, under `dtype` autocast."
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEV.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, feat = model(x)
    loss, _ = crit(logits.float(), feat.float(), y)
    loss.backward()
    return loss.detach(), feat.detach().float(), model.head.classifier.weight.grad.detach().flatten().float()


def rel(a, b): return float((a - b).norm() / b.norm())


@pytest.fixture
def fp32_exact():
    "Plain fp32 matmuls and convolutions (no TF32) while a test compares two ways of computing the same thing."
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# bf16 against fp32, per variant: (loss, features, classifier-gradient cosine). Measured with CPU bf16 autocast on this
# batch: full 0.1% / 0.4% / 0.9994, rga_sc 0.6% / 12% / 0.984 (RGA's relation maps are products of features, which
# compounds bf16's 8-bit mantissa). The bounds leave room for the GPU's different kernels.
BF16_TOLERANCE = {"full": (0.02, 0.03, 0.99), "rga_sc": (0.02, 0.25, 0.95)}


@pytest.mark.parametrize("variant", list(BF16_TOLERANCE))
def test_bf16_step_matches_fp32(variant, fp32_exact):
    torch.manual_seed(0)
    model = build_model(variant, 8).to(DEV).train()
    crit = ReIDLoss(8).to(DEV)
    x, y = batch()
    l32, f32, g32 = forward_backward(model, crit, x, y)
    l16, f16, g16 = forward_backward(model, crit, x, y, torch.bfloat16)
    tol_loss, tol_feat, tol_cos = BF16_TOLERANCE[variant]
    assert torch.isfinite(l16) and abs(float(l16 - l32)) / float(l32) < tol_loss, (float(l16), float(l32))
    assert rel(f16, f32) < tol_feat, rel(f16, f32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > tol_cos


@pytest.mark.parametrize("variant", ["full", "rga_sc"])
def test_channels_last_matches_contiguous(variant, fp32_exact):
    torch.manual_seed(0)
    model = build_model(variant, 8).to(DEV).train()
    crit = ReIDLoss(8).to(DEV)
    x, y = batch(4, 2)
    l1, f1, g1 = forward_backward(model, crit, x, y)
    model = model.to(memory_format=torch.channels_last)
    l2, f2, g2 = forward_backward(model, crit, x.contiguous(memory_format=torch.channels_last), y)
    assert abs(float(l1 - l2)) / float(l1) < 1e-4 and rel(f2, f1) < 1e-4 and rel(g2, g1) < 1e-3, (float(l1), float(l2), rel(f2, f1), rel(g2, g1))


def test_compiled_step_matches_eager(fp32_exact):
    torch.manual_seed(0)
    model = build_model("full", 8).to(DEV).train()
    crit = ReIDLoss(8).to(DEV)
    x, y = batch()
    l1, f1, g1 = forward_backward(model, crit, x, y)
    try:
        l2, f2, g2 = forward_backward(torch.compile(model), crit, x, y)
    except Exception as e:                        # e.g. no Triton / compiler in the image: say so, do not fail the GPU check
        pytest.skip(f"torch.compile does not work here: {type(e).__name__}: {str(e)[:200]}")
    assert abs(float(l1 - l2)) / float(l1) < 1e-4 and rel(f2, f1) < 1e-3 and rel(g2, g1) < 1e-2, (float(l1), float(l2), rel(f2, f1), rel(g2, g1))


def test_resident_and_classic_data_paths_agree(tmp_path):
    from reid_nb.data import read_dataset
    from reid_nb.sources import prepare_dataset
    from reid_nb.evaluate import extract_features
    ds = read_dataset("synthetic", prepare_dataset("synthetic", tmp_path, progress=False, num_train_ids=4, num_test_ids=4,
                                                   train_images_per_id=3, num_distractors=2, num_junk=1))
    model = build_model("full", ds.num_train_pids, input_size=(128, 64)).to(DEV).eval()
    kw = dict(input_size=(128, 64), device=DEV, batch_size=16, flip=True, progress=False, num_workers=2)
    a = extract_features(model, ds.gallery, data_path="resident", **kw)
    b = extract_features(model, ds.gallery, data_path="classic", **kw)
    assert a.device.type == DEV.type and a.shape == b.shape
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.999


def test_evaluation_and_reranking_on_the_device_equal_the_cpu():
    qf, gf, qp, gp, qc, gc = eval_problem("small", device="cpu")
    cpu = evaluate_rank(compute_distance(qf, gf), qp, gp, qc, gc)
    dq, dg = qf.to(DEV), gf.to(DEV)
    gpu = evaluate_rank(compute_distance(dq, dg), torch.as_tensor(qp).to(DEV), torch.as_tensor(gp).to(DEV),
                        torch.as_tensor(qc).to(DEV), torch.as_tensor(gc).to(DEV))
    assert abs(cpu["mAP"] - gpu["mAP"]) < 1e-5 and abs(cpu["mINP"] - gpu["mINP"]) < 1e-5
    cmc = [np.asarray(torch.as_tensor(r["cmc"]).cpu(), dtype=np.float64) for r in (cpu, gpu)]
    assert np.abs(cmc[0] - cmc[1]).max() < 1e-5
    rr_cpu = re_ranking(compute_distance(qf, gf), compute_distance(qf, qf), compute_distance(gf, gf))
    rr_gpu = re_ranking(compute_distance(dq, dg), compute_distance(dq, dq), compute_distance(dg, dg))
    assert rr_gpu.device.type == DEV.type
    assert torch.allclose(rr_gpu.cpu(), rr_cpu, atol=1e-4), float((rr_gpu.cpu() - rr_cpu).abs().max())


def test_evaluation_and_reranking_from_features_on_the_device_equal_the_cpu():
    "The block-wise paths (issue 30) with their blocks on the device: the same numbers as on the CPU."
    from reid_nb.metrics import evaluate_features
    from reid_nb.rerank import rerank_features
    qf, gf, qp, gp, qc, gc = eval_problem("tiny", device="cpu")
    dq, dg = qf.to(DEV), gf.to(DEV)
    for metric in ("cosine", "euclidean"):
        cpu = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, block=16)
        dev = evaluate_features(dq, dg, qp, gp, qc, gc, metric=metric, block=16)
        assert abs(cpu["mAP"] - dev["mAP"]) < 1e-6 and abs(cpu["mINP"] - dev["mINP"]) < 1e-6
        rr_cpu = rerank_features(qf, gf, metric=metric, block=64, pair_budget=2000)
        rr_dev = rerank_features(dq, dg, metric=metric, block=64, pair_budget=2000)
        assert rr_dev.device.type == DEV.type
        assert torch.allclose(rr_dev.cpu(), rr_cpu, atol=1e-4), float((rr_dev.cpu() - rr_cpu).abs().max())
