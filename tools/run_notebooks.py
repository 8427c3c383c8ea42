"""Execute notebooks in a Jupyter kernel and keep what a reader should see: the outputs of the teaching chapters.

    python tools/run_notebooks.py                      # every teaching chapter (TEACHING below), then nbdev_clean
    python tools/run_notebooks.py nbs/03_eca.ipynb     # these notebooks only
    python tools/run_notebooks.py --list               # which chapters are teaching, which keep only their figures
    python tools/run_notebooks.py --format             # no execution: every notebook as JupyterLab would save it

Each notebook runs top to bottom in a fresh `python3` kernel from its own folder (as JupyterLab's "Run All"), every
cell included (`#| slow` ones too), after seeding `random`, numpy and torch with 0 (so random weights and inputs of
cells without a seed of their own come out the same every time). What is written back into the notebook on disk (its
sources and cell ids are kept):
- a teaching chapter keeps the outputs of every code cell: printed results, tables, figures;
- any other notebook (the software-engineering chapters, the index) keeps only the PNGs of cells tagged `figure`.
Only stable output is kept, so that running the command again changes nothing in git: standard error (warnings, tqdm's
bars in a terminal; `TQDM_DISABLE=1` where a call does not choose), widgets (tqdm's bars in a notebook) with their text,
JavaScript and other rich types are dropped (text/plain, text/html, text/markdown and image/png stay); output metadata
and execution counts are emptied; printed wall times and speed-ups are masked ("0.41 s" becomes "… s", "(12.3×)"
becomes "(…×)"), and so are temporary folders ("/tmp/tmpa1b2c3d4/x" becomes "<tmp>/x"). Then `nbdev_clean` runs on the notebook, so the result is what `nbdev_clean` and CI keep.
`tests/test_docs.py` checks every committed notebook against `check_outputs` below (types, sizes, no execution counts).
Figures are drawn by the inline backend at its default 72 dpi; keep figsize modest (each PNG at most MAX_PNG bytes)."""
import argparse
import base64
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
# The teaching chapters: model (01-08), data (10-13), losses, metrics and re-ranking (20-22), training and evaluation
# (30-31). The software-engineering track (00 download, 24-29 params/runs/loader/step/core/provenance, 32-36 cli/report/
# bench/infer/export) and the index keep their figures only: their cells are plumbing checks, not results to read.
TEACHING = ("01_backbone", "02_mhsa", "03_eca", "04_rga", "05_fusion", "06_head", "07_models", "08_figures",
            "10_data", "11_synthetic", "12_sampler", "13_transforms", "20_losses", "21_metrics", "22_rerank",
            "30_train", "31_evaluate")
TAG = "figure"
WIDGET = "application/vnd.jupyter.widget-view+json"
KEEP = ("text/plain", "text/html", "text/markdown", "image/png")   # the MIME types a committed output may carry
FIGURE = ("text/plain", "image/png")   # a figure cell's output outside the teaching chapters (the inline backend's)
MAX_PNG = 100_000          # bytes of one PNG (decoded)
MAX_TEXT = 20_000          # characters of one text output
MAX_NB_OUTPUT = 600_000    # characters of output JSON in one notebook


def is_teaching(path: Path) -> bool: return Path(path).stem in TEACHING


def is_figure(cell) -> bool:
    return cell.get("cell_type") == "code" and TAG in cell.get("metadata", {}).get("tags", [])


_addr = re.compile(r"( at 0x[0-9a-fA-F]+)(>)")
# wall times and speed-ups a cell prints ("reference 0.412 s", "(12.3×)", "35 ms", "80.1 img/s"): they change with the
# machine and its load, so the committed text shows "… s", "(…×)"
# a temporary folder's path ("/tmp/tmpa1b2c3d4/data/market1501"): its random name as "<tmp>" ("<tmp>/data/market1501")
_tmp = re.compile(r"[^\s()'\"]*[/\\]tmp[a-z0-9_]{8}(?![a-z0-9_])")
_duration = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?=\s?(?:ms|µs|s|min|img/s|images/s|it/s)\b|×\))")


def _text(x) -> list:
    "An output's text as nbformat's list of lines; object addresses, temporary folders and wall times masked."
    s = "".join(x) if isinstance(x, list) else str(x)
    return _duration.sub("…", _tmp.sub("<tmp>", _addr.sub(r"\2", s))).splitlines(True)


def scrub(outputs: list, teaching: bool, figure: bool) -> list:
    "The stable part of one cell's outputs: what a reader should see, without anything that changes from run to run."
    kept = []
    for o in outputs:
        kind = o.get("output_type")
        if kind == "stream":
            if teaching and o.get("name") == "stdout":
                if kept and kept[-1]["output_type"] == "stream":   # one stdout block, however the kernel flushed it
                    kept[-1]["text"] = _text("".join(kept[-1]["text"]) + "".join(_text(o["text"])))
                else: kept.append({"output_type": "stream", "name": "stdout", "text": _text(o["text"])})
        elif kind in ("display_data", "execute_result"):
            if WIDGET in o.get("data", {}): continue          # a widget (tqdm's bar): its text is a passing moment
            data = {k: (v.rstrip() if k == "image/png" else _text(v)) for k, v in o.get("data", {}).items()
                    if k in (KEEP if teaching else FIGURE if figure else ())}
            if not data or set(data) == {"text/plain"} and not teaching: continue
            kept.append({"output_type": kind, "data": data, "metadata": {}})
            if kind == "execute_result": kept[-1]["execution_count"] = None
        elif kind == "error":
            raise RuntimeError(f"{o.get('ename')}: {o.get('evalue')}")
    return kept


def check_outputs(nb: dict, name: str) -> list[str]:
    "What is wrong with `nb`'s committed outputs (notebook file `name`) under the rule `scrub` writes."
    bad, teaching = [], is_teaching(Path(name))
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code": continue
        where = f"{name} cell {i} ({c.get('id')})"
        if c.get("execution_count") is not None: bad.append(f"{where}: execution count {c['execution_count']}")
        outs = c.get("outputs", [])
        if outs and not teaching and not is_figure(c): bad.append(f"{where}: output in a cell not tagged {TAG!r}")
        for o in outs:
            if o.get("output_type") == "stream" and o.get("name") != "stdout":
                bad.append(f"{where}: {o.get('name')} stream")
            if o.get("output_type") == "error": bad.append(f"{where}: an error output")
            if o.get("execution_count") is not None: bad.append(f"{where}: output execution count")
            if o.get("metadata"): bad.append(f"{where}: output metadata {sorted(o['metadata'])}")
            other = set(o.get("data", {})) - set(KEEP if teaching else FIGURE)
            if other: bad.append(f"{where}: output types {sorted(other)} (kept: {KEEP if teaching else FIGURE})")
            png = o.get("data", {}).get("image/png")
            if png and len(base64.b64decode(png)) > MAX_PNG:
                bad.append(f"{where}: PNG of {len(base64.b64decode(png))} bytes > {MAX_PNG}")
            for t in [o.get("text", "")] + [v for k, v in o.get("data", {}).items() if k.startswith("text/")]:
                if len("".join(t)) > MAX_TEXT: bad.append(f"{where}: {len(''.join(t))} characters of text > {MAX_TEXT}")
    size = sum(len(json.dumps(c.get("outputs", []))) for c in nb["cells"])
    if size > MAX_NB_OUTPUT: bad.append(f"{name}: {size} characters of outputs > {MAX_NB_OUTPUT}")
    return bad


# Run before the first cell: a chapter that draws untrained weights or random inputs without a seed of its own then
# shows the same numbers and figures on every run of this command (in JupyterLab they differ from run to run).
SEED = ("import random as _r; _r.seed(0)\ntry:\n import numpy as _n; _n.random.seed(0)\n"
        " import torch as _t; _t.manual_seed(0)\nexcept ImportError: pass")


def execute(path: Path, timeout: int = 1800):
    "Run `path` top to bottom in a fresh kernel from its own folder; the executed nbformat notebook."
    import nbformat
    from nbclient import NotebookClient
    run = nbformat.read(path, as_version=4)
    run.cells.insert(0, nbformat.v4.new_code_cell(SEED))  # not written back: outputs go back by cell id
    saved = {k: os.environ.pop(k, None) for k in ("MPLBACKEND",)}      # the kernel draws inline, not into Agg
    os.environ.update(TQDM_DISABLE="1", PYTHONHASHSEED="0")
    try:
        NotebookClient(run, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is not None: os.environ[k] = v
    return run


def render(path: Path, timeout: int = 1800) -> list[str]:
    "Execute `path` and write back its kept outputs (sources and cell ids as on disk), then nbdev_clean it."
    path = Path(path).resolve()
    run = execute(path, timeout)
    nb = json.loads(path.read_text(encoding="utf-8"))
    outs = {c.get("id"): c.get("outputs", []) for c in run.cells}
    teaching = is_teaching(path)
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        c["execution_count"] = None
        try: c["outputs"] = scrub(outs.get(c.get("id"), []), teaching, is_figure(c))
        except RuntimeError as e: raise RuntimeError(f"{path.name} cell {c.get('id')}: {e}") from None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(path)], check=True, cwd=ROOT)
    return check_outputs(json.loads(path.read_text(encoding="utf-8")), path.name)


def jupyterlab_format(path: Path) -> bool:
    """Rewrite `path` as jupyter_server writes a notebook JupyterLab saves (nbformat: every source and text as a list of
    lines), then nbdev_clean it, as the Jupyter hook does on a save; idempotent. Whether the file changed."""
    import nbformat
    path, before = Path(path).resolve(), Path(path).read_bytes()
    nbformat.write(nbformat.read(path, as_version=4), path)
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(path)], check=True, cwd=ROOT)
    return path.read_bytes() != before


def _cpu() -> float:
    "CPU seconds of this process and its finished children (the kernels): a measure that other load does not inflate."
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every teaching chapter)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--list", action="store_true", help="list the teaching chapters and the others, then stop")
    p.add_argument("--format", action="store_true",
                   help="execute nothing: write the notebooks (default: all under nbs/) as JupyterLab saves them")
    a = p.parse_args(argv)
    if a.format:
        for f in a.notebooks or sorted(NBS.glob("*.ipynb")):
            if jupyterlab_format(f): print(f"reformatted {f}")
        return
    if a.list:
        every = sorted(NBS.glob("*.ipynb"))
        print("teaching (every output kept):", " ".join(f.name for f in every if is_teaching(f)))
        print("figures only:", " ".join(f.name for f in every if not is_teaching(f)))
        return
    nbs = a.notebooks or [NBS / f"{t}.ipynb" for t in TEACHING]
    bad, t0, c0 = [], time.perf_counter(), _cpu()
    for f in nbs:
        t, c = time.perf_counter(), _cpu()
        bad += render(f, a.timeout)
        print(f"{f.name}: {time.perf_counter() - t:.0f} s ({_cpu() - c:.0f} s of CPU)", flush=True)
    print(f"{len(nbs)} notebook(s) in {time.perf_counter() - t0:.0f} s ({_cpu() - c0:.0f} s of CPU)")
    if bad: sys.exit("\n".join(bad))


if __name__ == "__main__":
    main()
