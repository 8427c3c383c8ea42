"""Benchmark: `evaluate_rank` and `re_ranking` against the classic algorithms, at Market-1501 scale.

    python bench/bench_metrics.py --scale market          # 3,368 queries x 15,913 gallery, features of dim 2048
    python bench/bench_metrics.py --scale small           # a quarter of that (the default; a minute or two)
    python bench/bench_metrics.py --scale tiny            # seconds (what tests/test_bench.py runs)

The problem: Market-like labels (750 identities seen by 2-6 of 6 cameras, 2,793 distractors with pid 0) and random
features with identity structure (identity centre + camera shift + noise), so that the metrics are those of a
mediocre model rather than of chance. Distances are computed once and stored in a temporary folder; every contender
then runs in its own subprocess, so that its time and its peak resident memory (VmHWM, inputs included) are
its own. Contenders:

* evaluation: `evaluate_rank` vs a lean per-query numpy loop (argsort each row, drop the junk, cumulate the matches);
  also checked against `evaluate_rank_reference` (one query at a time with the documented tie rule), since the loop's
  quicksort orders exactly equal float32 distances arbitrarily;
* re-ranking: `re_ranking` (sparse, torch) vs the classic dense algorithm (`re_ranking_reference`: N x N arrays,
  argsort of every row, per-image Python loops), as widely used.

Results must agree (metrics to 1e-6, re-ranked distances to 1e-5); the script exits with status 1 when they do not.
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

from reid_nb.bench import EVAL_SCALES as SCALES  # queries, gallery, identities, distractors, feature dim


def make_problem(scale: str, workdir: Path, seed: int = 0):
    "Labels, features (reid_nb.bench.eval_problem) and the three distance matrices of `scale`, saved as .npy files in `workdir`."
    from reid_nb.bench import eval_problem
    from reid_nb.metrics import compute_distance
    qf, gf, q_pids, g_pids, q_cams, g_cams = eval_problem(scale, "cpu", seed)
    np.savez(workdir / "labels.npz", q_pids=q_pids, q_cams=q_cams, g_pids=g_pids, g_cams=g_cams)
    for name, a, b in (("q_g", qf, gf), ("q_q", qf, qf), ("g_g", gf, gf)):
        np.save(workdir / f"{name}.npy", compute_distance(a, b, "euclidean").numpy())


def lean_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    "The classic evaluation: one query at a time, argsort its row, drop the junk, cumulate the matches."
    cmc, aps, inps = np.zeros(max_rank), [], []
    for i in range(len(distmat)):
        order = np.argsort(distmat[i])
        gp = g_pids[order]
        keep = ~((gp == q_pids[i]) & (g_camids[order] == q_camids[i]))
        pos = np.flatnonzero(gp[keep] == q_pids[i])
        if len(pos) == 0: continue
        if pos[0] < max_rank: cmc[pos[0]:] += 1
        aps.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))
        inps.append(len(pos) / (pos[-1] + 1))
    n = len(aps)
    return dict(cmc=cmc / n, mAP=float(np.mean(aps)), mINP=float(np.mean(inps)), num_valid=n)


def peak_rss_mb() -> float:
    "Peak resident memory of this process: VmHWM (reset by exec, unlike ru_maxrss, which Linux carries over from the parent)."
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(task: str, impl: str, workdir: Path):
    "Run one contender in this process; print time and peak memory as JSON, save its result in `workdir`."
    import torch
    lab = np.load(workdir / "labels.npz")
    labels = (lab["q_pids"], lab["g_pids"], lab["q_cams"], lab["g_cams"])
    if task == "eval":
        inputs = [np.load(workdir / "q_g.npy")]
    else:
        inputs = [np.load(workdir / f"{n}.npy") for n in ("q_g", "q_q", "g_g")]
    rss_inputs = peak_rss_mb()
    cuda = impl.endswith("cuda")
    if cuda:
        inputs = [torch.from_numpy(x).cuda() for x in inputs]
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if task == "eval":
        from reid_nb.metrics import evaluate_rank
        from reid_nb.metrics import evaluate_rank_reference
        f = dict(loop=lean_loop, reference=evaluate_rank_reference).get(impl, evaluate_rank)
        r = f(inputs[0], *labels)
        out = dict(cmc=np.asarray(r["cmc"]), mAP=np.float64(r["mAP"]), mINP=np.float64(r["mINP"]), num_valid=np.int64(r["num_valid"]))
    else:
        from reid_nb.rerank import re_ranking, re_ranking_reference
        if impl == "dense": res = re_ranking_reference(*inputs, sort_kind="quicksort")
        else:
            res = re_ranking(*inputs)
            if cuda: torch.cuda.synchronize()
            res = res.cpu().numpy()
        out = dict(dist=res)
    seconds = time.perf_counter() - t0
    stats = dict(seconds=seconds, peak_rss_mb=peak_rss_mb(), inputs_rss_mb=rss_inputs)
    if cuda: stats["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    np.savez(workdir / f"result_{task}_{impl}.npz", **out)
    print(json.dumps(stats))


def run_child(task, impl, workdir):
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, __file__, "--child", task, impl, "--workdir", str(workdir)], capture_output=True, text=True, env=env)
    if p.returncode != 0: raise RuntimeError(f"{task}/{impl} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=list(SCALES), default="small")
    ap.add_argument("--task", choices=["eval", "rerank", "all"], default="all")
    ap.add_argument("--skip-dense", action="store_true", help="skip the dense re-ranking reference (needs ~9 GB at Market scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(*a.child, Path(a.workdir))

    import torch
    nq, ng, n_ids, n_distr, dim = SCALES[a.scale]
    print(f"scale {a.scale}: {nq} queries x {ng} gallery, {n_ids} identities + {n_distr} distractors, features dim {dim}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores, threads {torch.get_num_threads()}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="reid_bench_") as tmp:
        wd = Path(tmp)
        t0 = time.perf_counter(); make_problem(a.scale, wd, a.seed)
        print(f"problem (features + 3 distance matrices) built in {time.perf_counter() - t0:.1f} s")
        tasks = ["eval", "rerank"] if a.task == "all" else [a.task]
        for task in tasks:
            base, fast = ("loop", "fast") if task == "eval" else ("dense", "sparse")
            impls = ([] if (task == "rerank" and a.skip_dense) else [base]) + [fast] + (["reference"] if task == "eval" else [])
            if torch.cuda.is_available(): impls.append(fast + "_cuda")
            st = {impl: run_child(task, impl, wd) for impl in impls}
            res = {impl: dict(np.load(wd / f"result_{task}_{impl}.npz")) for impl in impls}
            name = "evaluate_rank" if task == "eval" else "re_ranking"
            print(f"\n{name}:")
            for impl in impls:
                s = st[impl]
                extra = f", CUDA peak {s['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in s else ""
                print(f"  {impl:12s} {s['seconds']:9.3f} s   peak RSS {s['peak_rss_mb']:8.0f} MB (after loading inputs: {s['inputs_rss_mb']:.0f} MB){extra}")
            if base in st:
                for impl in [i for i in impls[1:] if i != "reference"]:
                    print(f"  speed-up {impl} vs {base}: {st[base]['seconds'] / st[impl]['seconds']:.1f}x; "
                          f"peak memory ratio {st[base]['peak_rss_mb'] / st[impl]['peak_rss_mb']:.1f}x")
            for impl in impls:
                against = fast if (impl == "reference" or base not in res) else base   # reference: the exact check of fast
                if impl == against or impl == base: continue
                ref = res[against]
                if task == "eval":
                    diff = max(np.abs(res[impl]["cmc"] - ref["cmc"]).max(), abs(res[impl]["mAP"] - ref["mAP"]), abs(res[impl]["mINP"] - ref["mINP"]))
                    same = diff <= 1e-6 and int(res[impl]["num_valid"]) == int(ref["num_valid"])
                    print(f"  {impl} vs {against}: max |difference| of CMC/mAP/mINP {diff:.2e} (tolerance 1e-6): {'equal' if same else 'DIFFERENT'}")
                else:
                    diff = float(np.abs(res[impl]["dist"] - ref["dist"]).max())
                    same = diff <= 1e-5
                    print(f"  {impl} vs {against}: max |difference| {diff:.2e} (tolerance 1e-5): {'equal' if same else 'DIFFERENT'}")
                ok &= bool(same)
            if task == "eval":
                r = res[fast]
                print(f"  metrics: mAP {float(r['mAP']):.4f}, mINP {float(r['mINP']):.4f}, rank-1 {float(r['cmc'][0]):.4f}, valid queries {int(r['num_valid'])}")
    print("\nresults equal" if ok else "\nRESULTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
