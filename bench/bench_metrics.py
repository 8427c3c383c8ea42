"""Benchmark: evaluation and k-reciprocal re-ranking vs the classic algorithms and the floors, Market-1501 to MSMT17.

    # 11,659 queries x 82,161 gallery, dim 2048 (20-30 min, 2 cores)
    python bench/bench_metrics.py --scale msmt17
    python bench/bench_metrics.py --scale market          # 3,368 queries x 15,913 gallery, features of dim 2048
    python bench/bench_metrics.py --scale small           # a quarter of Market (the default; a minute or two)
    python bench/bench_metrics.py --scale tiny            # seconds (what tests/test_bench.py runs)

The problem: labels shaped like the test split (Market: 750 identities seen by 2-6 of 6 cameras, 2,793 distractors with
pid 0; MSMT17: 3,060 identities and 15 cameras, the same share of distractors) and random features with identity
structure (identity centre + camera shift + noise), so that the metrics are those of a mediocre model, not of chance.
The features (and, where a contender needs it, the query x gallery distance matrix) are stored in a temporary folder;
every contender runs in its own subprocess, so that its time and its peak resident memory (VmHWM, inputs included) are
its own. A contender whose inputs or working arrays would not fit in the memory available is not run; the script says
how much it would need. Contenders:

* evaluation: `evaluate_rank` on the distance matrix vs a lean per-query numpy loop (argsort each row, drop the junk,
  cumulate the matches), checked against `evaluate_rank_reference` (one query at a time with the documented tie rule; on
  the first 2,000 queries where there are more: it is a slow loop); the classic loop's quicksort orders exactly equal
  float32 distances arbitrarily, so its numbers may differ in the last digits where a match ties with a non-match;
  `evaluate_features` (distances computed and ranked a block of queries at a time). Floors: one pass over the matrix
  (its maximum), and for `evaluate_features` the matrix product `qf @ gf.T` in the same blocks;
* re-ranking: `rerank_features` (from the features, blocks, never N x N) and `re_ranking` (from the three distance
  matrices) vs the classic dense algorithm (`re_ranking_reference`: N x N arrays, argsort of each row, per-image loops).
  Floor: the matrix product of the pairwise distances, `F @ F.T` with F the N x d features (2 N^2 d flops), timed with
  `torch.mm` a block of 4,096 rows at a time.

Results must agree (metrics to 1e-6, re-ranked distances to 1e-5); the script exits with status 1 when they do not.
`--json` writes the numbers; `--page` regenerates the Markdown page from every JSON given.
"""
from __future__ import annotations
import argparse, json, os, platform, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

# queries, gallery, ids, distractors (Market's share), dim
MSMT17 = (11659, 82161, 3060, round(82161 * 2793 / 15913), 2048)
CAMERAS = dict(msmt17=15)                                             # others: Market's 6
# evaluate_rank_reference checks at most these queries
REFERENCE_QUERIES = 2000
SCALE_NAMES = ("tiny", "small", "market", "msmt17")


def scales() -> dict:
    "reid_nb.bench.EVAL_SCALES and MSMT17 (imported here only: the children measure memory without the training stack)."
    from reid_nb.bench import EVAL_SCALES
    return dict(EVAL_SCALES, msmt17=MSMT17)
GiB = 2 ** 30


def make_features(scale: str, seed: int = 0):
    "Labels and features of `scale`: reid_nb.bench.eval_problem, or its construction with MSMT17's sizes, 15 cameras."
    import torch
    from reid_nb.bench import eval_problem, market_like_labels
    if scale != "msmt17": return eval_problem(scale, "cpu", seed)
    nq, ng, n_ids, n_distr, dim = MSMT17
    n_cams = CAMERAS[scale]
    q_pids, q_cams, g_pids, g_cams = market_like_labels(nq, ng, n_ids, n_distr, n_cams=n_cams, seed=seed)
    g = torch.Generator().manual_seed(seed)
    centres, cam_shift = torch.randn(n_ids + 1, dim, generator=g), 0.5 * torch.randn(n_cams, dim, generator=g)
    def feats(pids, cams):
        pids, cams = torch.as_tensor(pids), torch.as_tensor(cams)
        f = centres[pids] + cam_shift[cams] + 1.2 * torch.randn(len(pids), dim, generator=g)
        distr = pids == 0                                   # distractors: each its own random identity
        f[distr] = torch.randn(int(distr.sum()), dim, generator=g) + cam_shift[cams[distr]]
        return f
    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def needs(scale: str) -> dict:
    "Bytes each contender's inputs and main arrays take at `scale` (float32): what decides whether it can run here."
    nq, ng, *_, dim = scales()[scale]
    N, f = nq + ng, 4
    return dict(loop=nq * ng * f, fast=nq * ng * f, reference=nq * ng * f, features=N * dim * f,
                sparse=(nq * ng + nq * nq + ng * ng) * f,          # the three distance matrices
                # + original_dist, V, V_qe, int64 argsort
                dense=(nq * ng + nq * nq + ng * ng) * f + N * N * (3 * f + 8))


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"): return int(line.split()[1]) * 1024
    return 0


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
    "Peak resident memory of this process: VmHWM (reset by exec, unlike ru_maxrss, which Linux carries over on fork)."
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _metrics(r) -> dict:
    return dict(cmc=np.asarray(r["cmc"]), mAP=np.float64(r["mAP"]), mINP=np.float64(r["mINP"]),
                num_valid=np.int64(r["num_valid"]))


def child(task: str, impl: str, workdir: Path, save_full: bool):
    "Run one contender in this process; print time and peak memory as JSON, save its result in `workdir`."
    import torch
    from reid_nb.metrics import (evaluate_rank, evaluate_rank_reference, evaluate_features, evaluate_blocks,
                                 compute_distance)
    from reid_nb.rerank import re_ranking, re_ranking_reference, rerank_blocks
    # the baseline: python, torch and reid_nb imported
    rss_imports = peak_rss_mb()
    lab = np.load(workdir / "labels.npz")
    labels = (lab["q_pids"], lab["g_pids"], lab["q_cams"], lab["g_cams"])
    feats = impl in ("features", "gemm")
    if feats: inputs = [torch.from_numpy(np.load(workdir / f"{n}.npy")) for n in ("qf", "gf")]
    elif task == "eval" or impl == "sparse_dense_inputs": inputs = [np.load(workdir / "q_g.npy")]
    # the classic API: three matrices from the features
    else:
        qf, gf = (torch.from_numpy(np.load(workdir / f"{n}.npy")) for n in ("qf", "gf"))
        inputs = [compute_distance(a, b, "euclidean").numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
        del qf, gf
    rss_inputs = peak_rss_mb()
    stats = {}
    t0 = time.perf_counter()
    if task == "eval":
        # the one-pass floor first, on the same matrix
        if impl == "fast":
            float(inputs[0].max()); stats["one_pass_s"] = time.perf_counter() - t0; t0 = time.perf_counter()
        if impl == "gemm":
            qf, gf = inputs; buf = torch.empty(min(len(qf), max(1, (1 << 26) // len(gf))), len(gf))
            for a in range(0, len(qf), len(buf)): torch.mm(qf[a:a + len(buf)], gf.T, out=buf[:len(qf[a:a + len(buf)])])
            out = {}
        elif impl == "features": out = _metrics(evaluate_features(*inputs, *labels, metric="euclidean"))
        # too slow for all: the first queries, both ways
        elif impl == "reference" and len(inputs[0]) > REFERENCE_QUERIES:
            n = REFERENCE_QUERIES
            sub = (inputs[0][:n], labels[0][:n], labels[1], labels[2][:n], labels[3])
            out = _metrics(evaluate_rank_reference(*sub))
            out.update({f"fast_{k}": v for k, v in _metrics(evaluate_rank(*sub)).items()})
        else:
            f = dict(loop=lean_loop, reference=evaluate_rank_reference).get(impl, evaluate_rank)
            out = _metrics(f(inputs[0], *labels))
    else:
        if impl == "gemm":
            F = torch.cat(inputs); buf = torch.empty(min(4096, len(F)), len(F))
            for a in range(0, len(F), len(buf)): torch.mm(F[a:a + len(buf)], F.T, out=buf[:len(F[a:a + len(buf)])])
            out = {}
        # the pipeline's way: blocks, ranked as they come
        elif impl == "features" and not save_full:
            out = _metrics(evaluate_blocks(rerank_blocks(*inputs, metric="euclidean"), *labels))
        elif impl == "features":
            qf, gf = inputs
            res = torch.empty(len(qf), len(gf))
            for a, blk in rerank_blocks(qf, gf, metric="euclidean"): res[a:a + len(blk)] = blk
            out = dict(dist=res.numpy(), **_metrics(evaluate_rank(res, *labels)))
        # ties by index (stable sort)
        elif impl == "dense": out = dict(dist=re_ranking_reference(*inputs))
        else: out = dict(dist=re_ranking(*inputs).numpy())
    stats.update(seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(), inputs_rss_mb=rss_inputs,
                 imports_rss_mb=rss_imports)
    np.savez(workdir / f"result_{task}_{impl}.npz", **out)
    print(json.dumps(stats))


def run_child(task, impl, workdir, save_full=True):
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", task, impl, "--workdir", str(workdir)]
    cmd += [] if save_full else ["--stream"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0: raise RuntimeError(f"{task}/{impl} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


NAMES = dict(eval=dict(loop="classic loop (argsort per row)", reference="evaluate_rank_reference",
                       fast="evaluate_rank (matrix)",
                       features="evaluate_features (blocks)", gemm="floor: qf @ gf.T (GEMM)"),
             rerank=dict(dense="classic dense (re_ranking_reference)", sparse="re_ranking (3 matrices)",
                         features="rerank_features (blocks)", gemm="floor: F @ F.T (GEMM)"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=SCALE_NAMES, default="small")
    ap.add_argument("--task", choices=["eval", "rerank", "all"], default="all")
    ap.add_argument("--skip-dense", action="store_true", help="skip the dense re-ranking reference (9 GB at Market)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the numbers to this JSON file")
    ap.add_argument("--page", nargs="+", metavar="JSON", help="only write the Markdown page (--out) from these JSONs")
    ap.add_argument("--out", default="bench/metrics.md", help="the page --page writes")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(*a.child, Path(a.workdir), not a.stream)
    if a.page: return write_page([json.loads(Path(p).read_text()) for p in a.page], Path(a.out))

    import torch
    nq, ng, n_ids, n_distr, dim = scales()[a.scale]
    N = nq + ng
    env = dict(torch=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
               threads=torch.get_num_threads(),
               cpu=_cpu_name(), load_before=os.getloadavg(), mem_available_gb=mem_available() / 1e9)
    print(f"scale {a.scale}: {nq} queries x {ng} gallery, {n_ids} identities + {n_distr} distractors, "
          f"features dim {dim}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores, threads {torch.get_num_threads()}; {env['cpu']}; "
          f"load average {env['load_before'][0]:.2f}; {env['mem_available_gb']:.1f} GB available")
    big = needs(a.scale)
    avail = mem_available()
    fits = {k: v < 0.8 * avail for k, v in big.items()}
    ok, record = True, dict(scale=a.scale, sizes=dict(nq=nq, ng=ng, ids=n_ids, distractors=n_distr, dim=dim), env=env,
                            command="python bench/bench_metrics.py " + " ".join(sys.argv[1:] if argv is None else argv),
                            tasks={})
    with tempfile.TemporaryDirectory(prefix="reid_bench_") as tmp:
        wd = Path(tmp)
        t0 = time.perf_counter()
        qf, gf, q_pids, g_pids, q_cams, g_cams = make_features(a.scale, a.seed)
        np.savez(wd / "labels.npz", q_pids=q_pids, q_cams=q_cams, g_pids=g_pids, g_cams=g_cams)
        np.save(wd / "qf.npy", qf.numpy()); np.save(wd / "gf.npy", gf.numpy())
        if fits["fast"]:
            from reid_nb.metrics import compute_distance
            np.save(wd / "q_g.npy", compute_distance(qf, gf, "euclidean").numpy())
        del qf, gf
        what = "features, distance matrix" if fits["fast"] else "features"
        print(f"problem ({what}) built in {time.perf_counter() - t0:.1f} s")
        tasks = ["eval", "rerank"] if a.task == "all" else [a.task]
        for task in tasks:
            if task == "eval":
                impls = ["loop", "fast", "features", "gemm", "reference"]
                base = "loop"
            else:
                impls = ([] if a.skip_dense else ["dense"]) + ["sparse", "features", "gemm"]
                base = "dense"
            st, skipped = {}, {}
            for impl in impls:
                if impl in big and not fits[impl]:
                    skipped[impl] = (f"not run: needs {big[impl] / GiB:.1f} GiB for its inputs and main arrays, "
                                     f"{avail / GiB:.1f} GiB available")
                    continue
                stream = task == "rerank" and impl == "features" and a.scale == "msmt17"
                st[impl] = run_child(task, impl, wd, save_full=not stream)
            res = {impl: dict(np.load(wd / f"result_{task}_{impl}.npz")) for impl in st}
            print(f"\n{'evaluation' if task == 'eval' else 're-ranking'}:")
            floor_gemm, one_pass = st.get("gemm", {}).get("seconds"), st.get("fast", {}).get("one_pass_s")
            rows = [report_row(task, impl, st, skipped, base, floor_gemm, one_pass) for impl in impls]
            checks = compare(task, res)
            ok &= all(c["equal"] or c["impl"] == "loop" for c in checks)
            mres = res.get("features", {}) if task == "rerank" else (res.get("fast") or res.get("features") or {})
            metrics = {k: float(mres[k][0] if k == "cmc" else mres[k]) for k in ("mAP", "mINP", "cmc") if k in mres}
            if metrics:
                print(f"  metrics{' after re-ranking' if task == 'rerank' else ''}: mAP {metrics['mAP']:.4f}, "
                      f"mINP {metrics['mINP']:.4f}, rank-1 {metrics['cmc']:.4f}")
            record["tasks"][task] = dict(rows=rows, checks=checks, metrics=metrics, gemm_floor_s=floor_gemm,
                                         one_pass_s=one_pass,
                                         gemm_tflop=2 * (N * N if task == "rerank" else nq * ng) * dim / 1e12)
    record["env"]["load_after"] = os.getloadavg()
    record["ok"] = bool(ok)
    print(f"\nload average before {env['load_before'][0]:.2f}, after {record['env']['load_after'][0]:.2f}")
    print("\nresults equal" if ok else "\nRESULTS DIFFER")
    if a.json: Path(a.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0 if ok else 1


def report_row(task, impl, st, skipped, base, floor_gemm, one_pass) -> dict:
    "Print one contender's line; return its record (time, memory, ratios to the classic and to the floors)."
    name = NAMES[task][impl]
    if impl not in st:
        print(f"  {name:40s} {skipped[impl]}")
        return dict(impl=impl, name=name, skipped=skipped[impl])
    s = st[impl]
    row, extra = dict(impl=impl, name=name, **s), []
    if base in st and impl not in (base, "gemm"):
        row["speedup_vs_classic"] = st[base]["seconds"] / s["seconds"]
        extra.append(f"{row['speedup_vs_classic']:.1f}x faster than the classic")
    if floor_gemm and impl == "features":
        row["ratio_to_gemm"] = s["seconds"] / floor_gemm
        extra.append(f"{row['ratio_to_gemm']:.2f}x the GEMM floor")
    if one_pass and impl in ("fast", "loop", "reference"):
        row["ratio_to_one_pass"] = s["seconds"] / one_pass
        extra.append(f"{row['ratio_to_one_pass']:.1f}x one pass ({one_pass:.2f} s)")
    print(f"  {name:40s} {s['seconds']:9.2f} s   peak RSS {s['peak_rss_mb']:8.0f} MB "
          f"(imports {s['imports_rss_mb']:.0f} MB, + inputs {s['inputs_rss_mb'] - s['imports_rss_mb']:.0f} MB, "
          f"+ work {s['peak_rss_mb'] - s['inputs_rss_mb']:.0f} MB)" + ("; " + ", ".join(extra) if extra else ""))
    return row


def _diff(r, ref, prefix=""):
    "Largest difference of CMC, mAP and mINP, and whether the numbers of valid queries agree."
    d = max(np.abs(r[prefix + "cmc"] - ref["cmc"]).max(), abs(r[prefix + "mAP"] - ref["mAP"]),
            abs(r[prefix + "mINP"] - ref["mINP"]))
    return d, int(r[prefix + "num_valid"]) == int(ref["num_valid"])


def compare(task: str, res: dict) -> list[dict]:
    "Check every result against the reference (the classic loop's differences, from ties, are reported, not failed)."
    checks, ref_name = [], "reference" if "reference" in res else ("loop" if task == "eval" else "dense")
    def check(impl, against, what, diff, same, tol):
        info = impl == "loop"                       # the classic loop's quicksort orders tied distances arbitrarily
        verdict = "equal" if same else ("differs (ties in quicksort order)" if info else "DIFFERENT")
        print(f"  {impl} vs {against}: max |difference| of {what} {diff:.2e} (tolerance {tol:g}): {verdict}")
        checks.append(dict(impl=impl, against=against, what=what, diff=diff, tol=tol, equal=bool(same),
                           verdict=verdict))
    if "fast_mAP" in res.get("reference", {}):      # the reference ran on the first queries only, and so did fast
        diff, n_same = _diff({k[5:]: v for k, v in res["reference"].items() if k.startswith("fast_")}, res["reference"])
        what = f"CMC/mAP/mINP on the first {REFERENCE_QUERIES} queries"
        check("fast", "reference", what, diff, diff <= 1e-6 and n_same, 1e-6)
        ref_name = "fast"                           # the rest is checked against evaluate_rank
    for impl in res:
        if impl in ("gemm", ref_name) or not res[impl] or (impl == "reference" and ref_name == "fast"): continue
        against = ref_name if ref_name in res else ("sparse" if "sparse" in res and impl != "sparse" else None)
        if against is None or against == impl: continue
        ref = res[against]
        if task == "eval" or "dist" not in res[impl] or "dist" not in ref:
            diff, n_same = _diff(res[impl], ref)
            check(impl, against, "CMC/mAP/mINP", diff, diff <= 1e-6 and n_same, 1e-6)
        else:
            diff = float(np.abs(res[impl]["dist"] - ref["dist"]).max())
            check(impl, against, "re-ranked distances", diff, diff <= 1e-5, 1e-5)
    return checks


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
    except (OSError, StopIteration): return platform.processor() or "CPU"


def write_page(records: list[dict], out: Path):
    "The Markdown page of the metrics benchmark, from the JSON records of its runs."
    L = ["# Benchmark: evaluation and re-ranking at Market-1501 and MSMT17 scale", "",
         "Generated by `python bench/bench_metrics.py --page ...` from the JSON files that the runs below wrote "
         "(`--json`). Every contender ran in its own subprocess; time is wall time, peak memory the process's VmHWM, "
         "inputs included (and about 0.7 GiB for Python with torch imported); *inputs* is what loading the inputs "
         "added, *working set* what "
         "the contender added to that. "
         "The machine is shared: the load average is given with each run, and the robust numbers are the ratios "
         "measured in "
         "one run (to the classic algorithm and to the floors).", ""]
    for r in records:
        s, e = r["sizes"], r["env"]
        L += [f"## {r['scale']}: {s['nq']:,} queries × {s['ng']:,} gallery, dim {s['dim']}", "",
              f"```\n{r['command']}\n```", "",
              f"{e['cpu']}, {e['cpu_count']} cores, torch {e['torch']} ({e['threads']} threads), Python {e['python']}; "
              f"{e['mem_available_gb']:.1f} GB available; load average {e['load_before'][0]:.2f} before, "
              f"{e['load_after'][0]:.2f} after.", ""]
        for task, t in r["tasks"].items():
            floor = ""
            if t.get("gemm_floor_s"): floor = f"GEMM floor ({t['gemm_tflop']:.2f} TFLOP): {t['gemm_floor_s']:.1f} s"
            if t.get("one_pass_s"): floor += f"; one pass over the matrix: {t['one_pass_s']:.2f} s"
            L += [f"### {'Evaluation' if task == 'eval' else 'Re-ranking'}", "", floor, "",
                  "| contender | time | peak memory | inputs | working set | vs classic | vs floor |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
            for row in t["rows"]:
                if "skipped" in row: L.append(f"| {row['name']} | {row['skipped']} | | | | | |"); continue
                vs = f"{row['speedup_vs_classic']:.1f}× faster" if "speedup_vs_classic" in row else ""
                fl = (f"{row['ratio_to_gemm']:.2f}× GEMM" if "ratio_to_gemm" in row else
                      f"{row['ratio_to_one_pass']:.1f}× one pass" if "ratio_to_one_pass" in row else "")
                L.append(f"| {row['name']} | {row['seconds']:.2f} s | {row['peak_rss_mb'] / 1024:.2f} GiB | "
                         f"{(row['inputs_rss_mb'] - row['imports_rss_mb']) / 1024:.2f} GiB | "
                         f"{(row['peak_rss_mb'] - row['inputs_rss_mb']) / 1024:.2f} GiB | {vs} | {fl} |")
            L.append("")
            for c in t["checks"]:
                L.append(f"- {c['impl']} vs {c['against']}: max |difference| of {c['what']} {c['diff']:.1e} "
                         f"(tolerance {c['tol']:g}): {c.get('verdict') or ('equal' if c['equal'] else 'DIFFERENT')}")
            if t.get("metrics"):
                m = t["metrics"]
                L.append(f"- metrics{' after re-ranking' if task == 'rerank' else ''}: mAP {m['mAP']:.4f}, "
                         f"mINP {m['mINP']:.4f}, rank-1 {m['cmc']:.4f}")
            L.append("")
    out.write_text("\n".join(L).rstrip() + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
