"""The course: the exercises at the end of the teaching chapters, the learning objectives at their top, the first lesson
and the glossary at the front of the index, and the index's reading order against what each chapter imports.

An exercise is three code cells, found by their first line: `# YOUR TURN (exercise N)` (a function the student writes,
its body `raise NotImplementedError`), `# CHECK (exercise N)` (a `check_...` function and its call, which prints "not
done yet" while the function still raises) and, after the chapter's own cells, `# SOLUTION (exercise N)` (a worked
solution and the check's call on it). Each exercise runs here on its own, outside its chapter: the check must fail on
the unanswered cell and pass on the solution."""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402  (the index's reading order, as the book reads it)

MARK = re.compile(r"#\s*(YOUR TURN|CHECK|SOLUTION)\s*\(exercise (\d+)\)")
TEACHING = ["01_backbone", "02_mhsa", "03_eca", "04_rga", "05_fusion", "06_head", "07_models", "10_data",
            "11_synthetic", "12_sampler", "13_transforms", "20_losses", "21_metrics", "22_rerank", "30_train",
            "31_evaluate"]
# What the course has exercises on (issue 31): the chapter of each topic
TOPICS = {"IBN": "01_backbone", "MHSA": "02_mhsa", "ECA": "03_eca", "RGA": "04_rga", "fusion": "05_fusion",
          "head": "06_head", "losses": "20_losses", "metrics": "21_metrics", "re-ranking": "22_rerank",
          "sampler": "12_sampler", "transforms": "13_transforms", "training": "30_train"}
# Chapters that import a chapter placed after them in the reading order, and why no order removes it (nbs/index.ipynb)
LATER_IMPORTS = {("10_data", "11_synthetic"), ("10_data", "13_transforms"),    # pairs that use each other
                 ("13_transforms", "08_figures"),
                 ("24_params", "30_train"), ("25_runs", "30_train"),
                 ("32_cli", "34_bench")}


def _nb(stem: str) -> dict:
    return json.loads((NBS / f"{stem}.ipynb").read_text(encoding="utf-8"))


def _src(cell) -> str:
    return "".join(cell["source"])


def exercises(stem: str) -> dict[int, dict]:
    "{number: {'YOUR TURN': source, 'CHECK': source, 'SOLUTION': source, 'at': {kind: cell index}}} of a chapter."
    found = {}
    for i, c in enumerate(_nb(stem)["cells"]):
        m = MARK.match(_src(c)) if c["cell_type"] == "code" else None
        if m:
            ex = found.setdefault(int(m.group(2)), {"at": {}})
            ex[m.group(1)], ex["at"][m.group(1)] = _src(c), i
    return found


ALL = [(stem, n) for stem in sorted(p.stem for p in NBS.glob("*.ipynb")) for n in exercises(stem)]


def test_twelve_exercises_on_the_topics():
    chapters = {stem for stem, _ in ALL}
    assert len(ALL) >= 12, ALL
    missing = [topic for topic, stem in TOPICS.items() if stem not in chapters]
    assert not missing, f"no exercise on {missing}"


@pytest.mark.parametrize("stem,n", ALL, ids=[f"{s}-{n}" for s, n in ALL])
def test_exercise_fails_unanswered_and_passes_solved(stem, n, capsys):
    ex = exercises(stem)[n]
    assert set(ex) >= {"YOUR TURN", "CHECK", "SOLUTION"}, f"{stem}: exercise {n} lacks {set(ex) ^ {'at'}}"
    at = ex["at"]
    assert at["YOUR TURN"] < at["CHECK"] < at["SOLUTION"], f"{stem}: exercise {n}'s cells out of order"
    fn = re.search(r"^def (\w+)", ex["YOUR TURN"], re.M).group(1)
    check = re.search(r"^def (check_\w+)", ex["CHECK"], re.M).group(1)
    assert "raise NotImplementedError" in ex["YOUR TURN"]
    # unanswered: the check cell runs (the chapter still runs top to bottom) and says so; the check itself fails
    ns: dict = {}
    exec(compile(ex["YOUR TURN"], f"{stem}:your-turn", "exec"), ns)
    exec(compile(ex["CHECK"], f"{stem}:check", "exec"), ns)
    assert "not done yet" in capsys.readouterr().out
    with pytest.raises((NotImplementedError, AssertionError)):
        ns[check](ns[fn])
    # solved: the solution cell calls the check, which passes
    solution = re.search(r"^def (\w+)", ex["SOLUTION"], re.M).group(1)
    assert re.search(rf"^{check}\({solution}\)", ex["SOLUTION"], re.M), f"{stem}: the solution cell must run the check"
    ns = {}
    for kind in ("YOUR TURN", "CHECK"): exec(compile(ex[kind], f"{stem}:{kind}", "exec"), ns)
    exec(compile(ex["SOLUTION"], f"{stem}:solution", "exec"), ns)
    # and the check does check: a function that answers something else fails it
    with pytest.raises(Exception):
        ns[check](lambda *a, **k: 0)


def test_solutions_end_their_chapter():
    "The solutions come after every cell of the chapter's own (an exercise is not given away before it is tried)."
    for stem in {s for s, _ in ALL}:
        cells = _nb(stem)["cells"]
        first = min(ex["at"]["YOUR TURN"] for ex in exercises(stem).values())
        assert all(c["cell_type"] == "markdown" or MARK.match(_src(c)) for c in cells[first:]), stem
        assert MARK.match(_src(cells[-1])).group(1) == "SOLUTION", stem


def test_learning_objectives_open_every_teaching_chapter():
    for stem in TEACHING:
        cells = _nb(stem)["cells"]
        assert _src(cells[0]).startswith("# "), f"{stem}: the title comes first"
        objectives = _src(cells[1])
        assert objectives.startswith("**What you will learn"), f"{stem}: no learning objectives after the title"
        assert objectives.count("\n- ") >= 2, f"{stem}: objectives as a list of at least two"


def test_first_lesson_and_glossary_open_the_reading_order():
    parts = book.reading_order(_nb("index"))
    stems = [s for _, ss in parts for s in ss]
    assert stems[:2] == ["000_first_lesson", "glossary"], stems[:3]
    glossary = "".join(_src(c) for c in _nb("glossary")["cells"])
    for term in ("BNNeck", "P×K", "IBN", "mINP", "CMC", "mAP", "R1", "Re-ranking", "MHSA", "ECA", "RGA"):
        assert f"**{term}" in glossary, f"the glossary lacks {term}"
    code = [_src(c) for c in _nb("000_first_lesson")["cells"] if c["cell_type"] == "code"]
    work = [s for s in code if not all(re.match(r"(import |from \S+ import |$)", l) for l in s.splitlines())]
    assert "tempfile.TemporaryDirectory()" in work[0] and "tmp.cleanup()" in code[-1], "its files in one temp folder"
    lesson = "\n".join(code)
    for call in ("fit(", "evaluate_run(", "plot_retrieval(", "attention_maps(", "plot_attention("):
        assert call in lesson, f"the first lesson does not call {call}"
    optional = [p for p, _ in parts if "optional" in p.lower()]
    assert optional and all(s in {s for p, ss in parts if p in optional for s in ss}
                            for s in ("24_params", "25_runs", "26_loader", "27_step", "28_core", "29_provenance",
                                      "32_cli", "34_bench")), parts


def _imports(stem: str, modules: dict) -> set[str]:
    "The chapters whose module a chapter imports (any code cell)."
    src = "\n".join(_src(c) for c in _nb(stem)["cells"] if c["cell_type"] == "code")
    return {modules[m] for m in re.findall(r"(?:from|import)\s+reid_nb\.(\w+)", src) if m in modules} - {stem}


def test_no_chapter_imports_a_later_one_but_the_stated_pairs():
    stems = [s for _, ss in book.reading_order(_nb("index")) for s in ss]
    modules = {}
    for stem in stems:
        for c in _nb(stem)["cells"]:
            m = re.search(r"#\|\s*default_exp\s+(\S+)", _src(c))
            if m: modules[m.group(1)] = stem
    place = {s: i for i, s in enumerate(stems)}
    later = {(s, t) for s in stems if s != "000_first_lesson" for t in _imports(s, modules) if place[t] > place[s]}
    assert later <= LATER_IMPORTS, f"chapters importing a later one, not stated in the index: {later - LATER_IMPORTS}"
