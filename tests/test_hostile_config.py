"""Hostile options and config files (issue 28): every numeric option is refused by name outside its range, the lists
the pipeline runs over are never empty or out of range, the report never falls back to runs the pipeline did not make,
and every YAML/JSON file a user gives is read with bounds. Each case ends in one line that names the option, or the file
and key, with exit status 2: never a hang, a traceback or an "internal error". The cases that could hang run in a
subprocess with a timeout; the rest call the console script's `main` in this process (a process costs seconds)."""
import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HANG = 30          # seconds: a hostile file refused by bounds fails in about the time the imports take


def cli(*args):
    "`reid-nb ARGS` in this process: (exit status, stdout, stderr); argparse's own errors included."
    from reid_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()


def cli_process(*args, cwd):
    "`reid-nb ARGS` as a new process that may run at most HANG seconds (a hang is a failure, not a stuck test run)."
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    try:
        p = subprocess.run([sys.executable, "-m", "reid_nb.cli", *map(str, args)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reid-nb {' '.join(map(str, args))[:120]} still running after {HANG} s")
    return p.returncode, p.stdout, p.stderr


def one_line(result, *needles) -> str:
    "The command failed (status 2) with one error line naming every needle; no traceback, no 'internal error'."
    rc, out, err = result
    lines = err.strip().splitlines()
    if lines and lines[0].startswith("usage:"): lines = [l for l in lines if "error:" in l]   # argparse: usage, error
    assert rc == 2 and len(lines) == 1, (rc, err[-2000:])
    assert "Traceback" not in out + err and "internal error" not in err, err[-2000:]
    for n in needles: assert str(n) in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    "Run in an empty folder: nothing of the repository's data, runs or params.yaml is found by accident."
    monkeypatch.chdir(tmp_path)
    return tmp_path


def billion_laughs(levels: int = 9) -> str:
    "Ten lines of YAML anchors and aliases that expand into 9^levels values."
    names = "abcdefghij"[:levels]
    lines = [f"a: &a [{', '.join(['lol'] * 9)}]"]
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


# 1. Hostile YAML: bounded reading (size, aliases, depth, encoding), the file's name in one line ------------------

def test_billion_laughs_profile_is_refused_not_expanded(here):
    bomb = here / "params-bomb.yaml"
    bomb.write_text("variant_defs:\n" + "".join("  " + l + "\n" for l in billion_laughs().splitlines()))
    one_line(cli_process("profile", bomb, "--dry-run", cwd=here), bomb, "alias *a", "anchors and aliases")


def test_billion_laughs_params_is_refused_not_expanded(here):
    "The aliases inside the seeds list: an error message that prints the list would print 9^8 values."
    levels = [f"&a [{', '.join(['0'] * 9)}]"]
    levels += [f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh")]
    bomb = here / "p.yaml"
    bomb.write_text(f"variants: [full]\nseeds: [{', '.join(levels)}]\n")
    one_line(cli_process("variants", "--params", bomb, cwd=here), bomb, "alias *a")


def test_a_fifo_given_as_params_or_profile_is_refused_not_opened(here):
    "Opening a named pipe for reading waits for a writer that never comes: the file is refused by its kind, unopened."
    fifo = here / "params-pipe.yaml"
    os.mkfifo(fifo)
    one_line(cli_process("variants", "--params", fifo, cwd=here), fifo, "FIFO")
    one_line(cli_process("profile", fifo, "--dry-run", cwd=here), fifo, "FIFO")


def test_a_50_mb_params_file_is_refused_before_parsing(here):
    big = here / "p.yaml"
    with open(big, "w") as f:
        f.write("profile: cpu\nseeds: [")
        f.write("0, " * (50 * 2**20 // 3))
        f.write("0]\n")
    one_line(cli_process("variants", "--params", big, cwd=here), big, "bytes; a params file is at most 1,048,576 bytes")


@pytest.mark.parametrize("content, needle", [
    (b"- baseline\n- full\n", "expected a mapping at the top level, got list"),      # a list, not a mapping
    (b"&a {profile: cpu, x: *a}\n", "alias *a"),                                     # refers to itself
    (b"train: {lr: [0.1\n", "not valid YAML"),                                       # broken: one line
], ids=["list", "self-reference", "broken"])
def test_hostile_profile_is_one_line_naming_it(here, content, needle):
    prof = here / "params-hostile.yaml"
    prof.write_bytes(content)
    line = one_line(cli("profile", prof, "--dry-run"), prof, needle)
    assert "dvc exp run" not in line


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe\x00\x01\x89PNG\r\n\x1a\n", "not UTF-8 text (byte 0xff at offset 0)"),     # a binary file
    (b"train: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 16 deep"),         # the composer recurses
], ids=["binary", "deep"])
def test_hostile_params_is_one_line_naming_it(here, content, needle):
    params_refused(here, content, needle)


def params_refused(here, content, needle):
    "`reid-nb variants --params p.yaml` with `content` (text or bytes) ends in one line naming p.yaml and `needle`."
    p = here / "p.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    one_line(cli("variants", "--params", p), p, needle)


def test_a_binary_benchmark_json_is_named(here):
    f = here / "bench.json"
    f.write_bytes(b"\x80\x81 not json")
    one_line(cli("bench", "--from-json", f), f, "not UTF-8 text")


# 2. The lists the pipeline runs over: non-empty, of valid values ------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ("seeds: []\n", "seeds is an empty list"),
    (f"seeds: [0, {2**70}]\n", f"seeds[1]={2**70}: expected an integer from 0 to 2^32 − 1"),
    ("variants: []\n", "variants is an empty list"),
    ("variants: [[full]]\n", "variants[0]=['full']: expected a variant name"),
    ("datasets: []\n", "datasets is an empty list"),
    ("seeds: [0, 1, 0]\n", "seeds lists 0 more than once"),
], ids=["seeds-empty", "seed-2^70", "variants-empty", "variant-list", "datasets-empty", "seed-twice"])
def test_pipeline_lists_are_checked(here, text, needle):
    params_refused(here, text, needle)


def test_report_names_a_missing_metrics_file_and_leaves_reports_alone(here):
    p = here / "p.yaml"
    p.write_text("variants: [baseline]\ndatasets: [synthetic]\nseeds: [0, 1]\n")
    metrics = here / "metrics"
    for f in (metrics / "baseline-synthetic-s0.json", metrics / "runs" / "baseline-synthetic-s0.json"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text('{"mAP": 0.5}')
    reports = here / "reports"
    reports.mkdir()
    (reports / "table2.md").write_text("the last good report\n")
    one_line(cli("report", "--params", p, "--metrics-dir", metrics, "--runs-dir", here / "runs", "--out", reports,
                 "--template", ROOT / "nbs" / "reports" / "report.ipynb"),
             metrics / "baseline-synthetic-s1.json", "no such metrics file")
    assert sorted(f.name for f in reports.rglob("*")) == ["table2.md"]
    assert (reports / "table2.md").read_text() == "the last good report\n"



def test_a_report_that_fails_half_way_leaves_reports_as_they_were(here):
    "A template cell that fails after another wrote a table: reports/ is put back as it was, the error is one line."
    import nbformat
    from reid_nb.report import run_report
    template = here / "t.ipynb"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('out_dir = "reports"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('from pathlib import Path\n(Path(out_dir) / "table1.md").write_text("half")'),
        nbformat.v4.new_code_cell('raise ValueError("no ranking.json for seed 1")')])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, template)
    reports = here / "reports"
    reports.mkdir()
    (reports / "table2.md").write_text("the last good report\n")
    with pytest.raises(RuntimeError) as e:
        run_report(template, reports, {})
    msg = str(e.value)
    Path(msg.rsplit(": ", 1)[-1]).unlink(missing_ok=True)                    # the failed notebook, kept for a look
    assert "\n" not in msg and "ValueError: no ranking.json for seed 1" in msg, msg
    assert "reports is left as it was" in msg, msg
    assert sorted(p.name for p in reports.rglob("*")) == ["table2.md"]
    assert (reports / "table2.md").read_text() == "the last good report\n"
    assert sorted(p.name for p in here.iterdir()) == ["reports", "t.ipynb"]     # no copy left beside it

# 3. Numbers: every option's range, by name, on the command line and in params and profile files ----------------------

EXTRACT = ["extract", "--run", "r", "--images", "i", "--out", "o.npz"]
SEARCH = ["search", "--run", "r", "--query", "q.jpg", "--gallery", "g", "--out", "o"]
EXPORT = ["export", "--run", "r", "--out", "o.onnx"]
TRAIN = ["train", "--dataset", "market1501", "--data-root", "d", "--out", "r"]     # a missing dataset: nothing trains


@pytest.mark.parametrize("args, needle", [
    (EXTRACT + ["--batch-size", "-3"], "argument --batch-size: expected a positive integer, got -3"),
    (EXTRACT + ["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    (SEARCH + ["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    (SEARCH + ["--topk", str(2**40)], "argument --topk: expected a positive integer (at most 2^31 − 1), got 10995"),
    (EXPORT + ["--tolerance", "nan"], "argument --tolerance: expected a positive number (a finite number, not nan)"),
    (EXPORT + ["--tolerance", "inf"], "argument --tolerance: expected a positive number (a finite number, not inf)"),
    (EXPORT + ["--tolerance", "-1"], "argument --tolerance: expected a positive number, got -1"),
    (["synth", "--root", "s", "--seed", str(2**70)], "argument --seed: expected an integer from 0 to 2^32 − 1"),
    (["prepare", "synthetic", "--root", "d", "--seed", "-1"], "argument --seed: expected an integer from 0 to 2^32"),
    (["evaluate", "--run", "r", "--batch-size", str(2**40)],
     "evaluate.batch_size=1099511627776: expected a positive integer (at most 2^31 − 1)"),
    (TRAIN + ["--lr", "inf"], "lr=inf: expected a positive learning rate (a finite number, not inf)"),
    (TRAIN + ["--losses", "triplet: {margin: .inf}"],
     "losses.triplet.margin=inf: expected a value ≥ 0 (a finite number, not inf)"),
    (TRAIN + ["--seed", str(2**70)], "seed=1180591620717411303424: expected an integer from 0 to 2^32 − 1"),
], ids=["extract-bs-neg", "extract-bs-0", "search-bs-0", "search-topk-2^40", "export-tol-nan", "export-tol-inf",
        "export-tol-neg", "synth-seed-2^70", "prepare-seed-neg", "evaluate-bs-2^40", "train-lr-inf", "train-margin-inf",
        "train-seed-2^70"])
def test_numeric_options_are_refused_by_name(here, args, needle):
    one_line(cli(*args), needle)
    assert not any(here.iterdir()), sorted(p.name for p in here.iterdir())        # nothing written


@pytest.mark.parametrize("text, needle", [
    ("train: {erase_p: 1.5}\n", "train.erase_p=1.5: expected a probability in [0, 1]"),
    ("overrides: {sam: {lr: -0.001}}\n", "overrides.sam.lr=-0.001: expected a positive learning rate"),
    ("evaluate: {topk: 0}\n", "evaluate.topk=0: expected a positive integer"),
], ids=["erase-p", "negative-lr-override", "evaluate-topk"])
def test_profile_numbers_are_checked_like_params(here, text, needle):
    prof = here / "params-bad.yaml"
    prof.write_text("profile: bad\nvariants: [full, sam]\n" + text)
    one_line(cli("profile", prof, "--dry-run"), prof, needle)
    one_line(cli("variants", "--params", prof), prof, needle)      # the same check for a params file


def test_every_numeric_config_field_has_a_range():
    "One table bounds every number of every config: a field added without a range would be unchecked."
    import typing
    from reid_nb.params import RANGES
    from reid_nb.train import TrainConfig
    from reid_nb.evaluate import EvalConfig
    from reid_nb.bench import BenchConfig
    for cls in (TrainConfig, EvalConfig, BenchConfig):
        hints = typing.get_type_hints(cls)
        numeric = [f.name for f in dataclasses.fields(cls)
                   if hints[f.name] in (int, float) or f.name in ("input_size", "milestones")]
        assert set(numeric) <= set(RANGES), (cls.__name__, sorted(set(numeric) - set(RANGES)))
    with pytest.raises(ValueError, match=r"threads=100000: expected an integer from 0 to 4096"):
        BenchConfig(threads=100_000)


# 4. Errors that named no file: an archive member's name too long, an image name that is not UTF-8 --------------------

def test_an_archive_member_with_a_too_long_name_is_named_before_extracting(here):
    import hashlib, io, tarfile
    arc = here / "Market-1501-v15.09.15.tar"
    with tarfile.open(arc, "w") as tf:
        ti = tarfile.TarInfo("Market-1501-v15.09.15/query/" + "a" * 300 + ".jpg"); ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    md5 = hashlib.md5(arc.read_bytes()).hexdigest()
    one_line(cli("prepare", "market1501", "--root", here / "d", "--archive", arc, "--md5", md5),
             arc, "member 'Market-1501-v15.09.15/query/aaaa", "a part longer than 255 bytes")
    assert not (here / "d" / "market1501").exists()


def test_an_image_name_that_is_not_utf8_is_named(here, data_root):
    import shutil
    shutil.copytree(data_root / "synthetic", here / "data" / "synthetic")
    query = here / "data" / "synthetic" / "query"
    first = sorted(query.iterdir())[0]
    bad = os.fsdecode(os.fsencode(str(first.with_suffix(""))) + b"\xff" + first.suffix.encode())
    shutil.copy(first, bad)
    one_line(cli("prepare", "synthetic", "--root", here / "data", "--manifest", here / "m.json"),
             first.with_suffix("").name + "\\xff" + first.suffix, "the file name is not UTF-8 text")
    assert not (here / "m.json").exists()
