"""Evaluation and re-ranking from features, in blocks (issue 30): at a small scale, equal to the classic algorithms fed with
the full distance matrices, with blocks small enough that the blocked code runs many of them; and no N × N array is made.
No timings are asserted (bench/bench_metrics.py measures them)."""
import numpy as np
import pytest
import torch

import reid_nb.rerank as rerank_mod
from reid_nb.bench import eval_problem
from reid_nb.metrics import compute_distance, evaluate_blocks, evaluate_features, evaluate_rank, evaluate_rank_reference
from reid_nb.rerank import re_ranking, re_ranking_reference, rerank_blocks, rerank_features


@pytest.fixture(scope="module")
def problem():
    return eval_problem("tiny", "cpu", seed=1)          # 60 queries x 300 gallery, Market-like labels, dim 64


def metrics_close(a, b, tol=1e-6):
    assert a["num_valid"] == b["num_valid"]
    assert np.abs(np.asarray(a["cmc"]) - np.asarray(b["cmc"])).max() <= tol
    assert abs(a["mAP"] - b["mAP"]) <= tol and abs(a["mINP"] - b["mINP"]) <= tol


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rerank_features_equals_the_classic_algorithm(problem, metric):
    qf, gf, *_ = problem
    mats = [compute_distance(a, b, metric) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    ref = re_ranking_reference(*[m.numpy() for m in mats])
    got = rerank_features(qf, gf, metric=metric, block=64, pair_budget=2000)      # 6 blocks of rows: 21 block pairs
    assert np.abs(got.numpy() - ref).max() <= 1e-5
    assert np.abs(got.numpy() - re_ranking(*mats).numpy()).max() <= 1e-5


def test_rerank_never_makes_an_n_by_n_block(problem, monkeypatch):
    qf, gf, *_ = problem
    N, shapes = len(qf) + len(gf), []
    real = rerank_mod._dist_block
    def spy(q, q2, g, g2, metric, out=None):
        shapes.append((len(q), len(g)))
        return real(q, q2, g, g2, metric, out)
    monkeypatch.setattr(rerank_mod, "_dist_block", spy)
    blocks = list(rerank_blocks(qf, gf, block=50, pair_budget=1500))
    assert len(blocks) > 1 and max(r * c for r, c in shapes) < N * N / 4
    assert len([s for s in shapes if s[0] <= 50 and s[1] <= 50]) == 8 * 9 // 2     # the upper triangle of 8 x 8 blocks
    assert sorted(a for a, _ in blocks) == [a for a, _ in blocks]


def test_ties_at_the_kth_neighbour_are_settled_exactly():
    g = torch.Generator().manual_seed(4)
    qf, gf = torch.randn(25, 8, generator=g), torch.randn(160, 8, generator=g)
    gf[:40] = gf[0]; qf[:3] = gf[0]                              # 43 identical images: ties across every block edge
    for metric in ("cosine", "euclidean"):
        ref = re_ranking_reference(*[compute_distance(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))])
        got = rerank_features(qf, gf, metric=metric, block=32, margin=2)
        assert np.abs(got.numpy() - ref).max() <= 1e-5


@pytest.mark.parametrize("cross_camera", [False, True])
def test_evaluate_features_and_blocks_equal_the_reference(problem, cross_camera):
    qf, gf, *labels = problem
    for metric in ("cosine", "euclidean"):
        ref = evaluate_rank_reference(compute_distance(qf, gf, metric).numpy(), *labels, cross_camera=cross_camera)
        metrics_close(evaluate_features(qf, gf, *labels, metric=metric, cross_camera=cross_camera, block=7), ref)
    rr = re_ranking_reference(*[compute_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))])
    metrics_close(evaluate_blocks(rerank_blocks(qf, gf, pair_budget=1000), *labels, cross_camera=cross_camera),
                  evaluate_rank_reference(rr, *labels, cross_camera=cross_camera))


def test_evaluate_rank_counts_only_up_to_the_last_match():
    "Long rows (more gallery than one chunk), matches deep in the list, ties, NaN and inf: equal to the reference."
    rng = np.random.default_rng(0)
    nq, ng = 40, 70_000
    q_pids, g_pids = rng.integers(1, 30, nq), rng.integers(0, 30, ng)
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    d = np.round(rng.random((nq, ng)) * 500).astype(np.float32) / 500               # many exact ties
    d[0, np.flatnonzero(g_pids != q_pids[0])[:1000]] = np.nan                       # NaN: ranks last (never on a match)
    d[1, :1000] = np.inf
    for cc in (False, True):
        metrics_close(evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, cross_camera=cc),
                      evaluate_rank_reference(d, q_pids, g_pids, q_cams, g_cams, cross_camera=cc), tol=1e-12)
