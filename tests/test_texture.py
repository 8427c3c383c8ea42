"""The package's texture, kept by test: lines of at most 120 characters, functions of at most 60 lines, no unused import.

The package is exported from the notebooks, so a failure here is fixed in the notebook named by `# %% ../nbs/...` above
the line. Two kinds of line are nbdev's own and exempt: `_modidx.py` (nbdev's index of names) and the `__all__` list it
writes (it wraps the list at 120 columns and then puts `__all__ = ` in front of it)."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "reid_nb"
MODULES = sorted(p for p in PKG.glob("*.py") if p.name != "_modidx.py")
MAX_LINE, MAX_FUNCTION = 120, 60
# functions allowed past MAX_FUNCTION, and why
LONG_FUNCTIONS = {
    "synthetic._draw_person": "the renderer of the synthetic set: its random draws come in one fixed order, which the "
                              "committed manifest's fingerprint depends on; splitting it risks reordering them",
}


def _all_lines(text: str) -> set[int]:
    "Line numbers (1-based) of nbdev's generated `__all__ = [...]` statement."
    tree = ast.parse(text)
    return {n for node in tree.body if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            for n in range(node.lineno, node.end_lineno + 1)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_lines_are_at_most_120_characters(path):
    text = path.read_text(encoding="utf-8")
    exempt = _all_lines(text)
    long = [(i, len(line.encode())) for i, line in enumerate(text.splitlines(), 1)
            if len(line.encode()) > MAX_LINE and i not in exempt]          # UTF-8 bytes: × or — count as more than one
    assert not long, f"{path.name}: lines over {MAX_LINE} characters (line, length): {long[:10]}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_functions_are_at_most_60_lines(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION and f"{path.stem}.{node.name}" not in LONG_FUNCTIONS:
                long.append((node.name, n))
    assert not long, f"{path.name}: functions over {MAX_FUNCTION} lines (name, lines): {long}"


def test_the_listed_long_functions_are_still_long():
    "An exception that is no longer needed is removed from the list, so the list stays true."
    for qual in LONG_FUNCTIONS:
        mod, name = qual.split(".")
        tree = ast.parse((PKG / f"{mod}.py").read_text(encoding="utf-8"))
        sizes = [n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
        assert sizes and max(sizes) > MAX_FUNCTION, f"{qual}: no longer over {MAX_FUNCTION} lines; drop it from the list"


def _unused_imports(text: str) -> list[str]:
    tree = ast.parse(text)
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__": continue
            for a in node.names:
                name = (a.asname or a.name).split(".")[0]
                imported.setdefault(name, node.lineno)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    # names in string annotations and in __all__ count as used
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str): used |= set(n.value.replace(".", " ").split())
    return sorted(name for name in imported if name not in used)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_unused_imports(path):
    unused = _unused_imports(path.read_text(encoding="utf-8"))
    assert not unused, f"{path.name}: imported but never used: {unused}"


def test_the_unused_import_check_finds_one():
    assert _unused_imports("import os, sys\nfrom math import pi, tau\nprint(sys.argv, pi)\n") == ["os", "tau"]
