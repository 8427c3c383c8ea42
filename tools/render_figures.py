"""Re-render the figures of notebooks: run each notebook top to bottom in a Jupyter kernel, keep the PNG output of the cells
tagged `figure` (cell metadata `"tags": ["figure"]`) and nothing else, then run `nbdev_clean` on it.

    python tools/render_figures.py nbs/02_mhsa.ipynb nbs/21_metrics.ipynb   # these notebooks
    python tools/render_figures.py                                          # every notebook under nbs/ that has a figure cell

The committed notebooks then carry exactly their figures, so a reader who opens one in JupyterLab or on a code host sees them
without running anything. `nbdev_clean` keeps these outputs (`clear_all = False` in settings.ini) and strips execution counts
and metadata; it does not strip outputs, so this script is what decides which outputs a notebook keeps, and
`tests/test_docs.py` checks every committed notebook against the same rule (`check_outputs` below).
Only the kernel's own text is changed: the sources and cell ids of the notebook on disk are kept as they are."""
import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "figure"
KEEP = "image/png"
MAX_PNG = 100_000         # bytes of one PNG (decoded); draw at a small figsize/dpi to stay under it


def is_figure(cell) -> bool:
    return cell.get("cell_type") == "code" and TAG in cell.get("metadata", {}).get("tags", [])


def figure_outputs(outputs: list) -> list:
    "The PNGs among a cell's outputs, as display_data without text, execution counts or metadata."
    return [{"output_type": "display_data", "data": {KEEP: o["data"][KEEP]}, "metadata": {}}
            for o in outputs if o.get("output_type") in ("display_data", "execute_result") and KEEP in o.get("data", {})]


def check_outputs(nb: dict, name: str = "") -> list[str]:
    "What is wrong with `nb`'s outputs under the rule: PNGs in figure cells only, small, and no execution counts."
    bad = []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code": continue
        where = f"{name} cell {i} ({c.get('id')})"
        if c.get("execution_count") is not None: bad.append(f"{where}: execution count {c['execution_count']}")
        outs = c.get("outputs", [])
        if outs and not is_figure(c): bad.append(f"{where}: {len(outs)} output(s) in a cell not tagged {TAG!r}")
        for o in outs:
            keys = set(o.get("data", {}))
            if o.get("output_type") != "display_data" or keys != {KEEP}:
                bad.append(f"{where}: output {o.get('output_type')} {sorted(keys)} (only {KEEP} display_data is kept)")
            elif len(base64.b64decode(o["data"][KEEP])) > MAX_PNG:
                bad.append(f"{where}: PNG of {len(base64.b64decode(o['data'][KEEP]))} bytes > {MAX_PNG}")
    return bad


def render(path: Path, timeout: int = 1800) -> list[str]:
    "Execute `path` in a kernel (from its own folder, as JupyterLab does) and write back only its figure cells' PNGs."
    import nbformat
    from nbclient import NotebookClient
    nb = json.loads(path.read_text(encoding="utf-8"))
    run = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    env_backend = os.environ.pop("MPLBACKEND", None)    # the kernel must draw inline, not into Agg
    try:
        NotebookClient(run, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_backend is not None: os.environ["MPLBACKEND"] = env_backend
    outs = {c.get("id"): c.get("outputs", []) for c in run.cells}
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        c["execution_count"] = None
        c["outputs"] = figure_outputs(outs.get(c.get("id"), [])) if is_figure(c) else []
        if is_figure(c) and not c["outputs"]: print(f"  warning: {path.name} figure cell {c.get('id')} drew nothing")
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(path)], check=True, cwd=ROOT)
    return check_outputs(json.loads(path.read_text(encoding="utf-8")), path.name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to render (default: every notebook under nbs/ with a figure cell)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    a = p.parse_args(argv)
    nbs = a.notebooks or [f for f in sorted((ROOT / "nbs").rglob("*.ipynb")) if not any(s.startswith((".", "_")) for s in f.relative_to(ROOT).parts)
                          and any(is_figure(c) for c in json.loads(f.read_text(encoding="utf-8"))["cells"])]
    bad = []
    for f in nbs:
        print(f"rendering {f}", flush=True)
        bad += render(f.resolve(), a.timeout)
    if bad: sys.exit("\n".join(bad))


if __name__ == "__main__":
    main()
