"""The README is a front page, and its results are the pipeline's. It copies no number of the committed reports (a copy
could drift from them): it points to `reports/` and to the book's Results page, `docs/results.md`, which includes every
table and statement the report stage writes, file by file, when the book is built. Every file the README names exists,
and the test command that .ci/run reads from it is there."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
GENERATED = ["table1.md", "table2.md", "ablation_steps.md", "ablation_statement.md", "environment.md"]


def _rows(md: str) -> list[str]:
    "The data rows of a Markdown table (not the header's separator), and every other non-empty line of prose."
    return [ln.strip() for ln in md.splitlines() if ln.strip() and not re.fullmatch(r"\|[-|: ]+\|", ln.strip())]


@pytest.mark.parametrize("name", GENERATED)
def test_readme_copies_no_report_and_the_book_includes_it(name):
    text = (ROOT / "reports" / name).read_text(encoding="utf-8").strip()
    assert text, f"reports/{name} is empty"
    copied = [r for r in _rows(text) if r.startswith("|") and r in README or len(r) > 80 and r in README]
    assert not copied, f"README.md copies reports/{name} (point to it instead): {copied[:2]}"
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert f'--8<-- "reports/{name}"' in page, f"docs/results.md does not include reports/{name}"


def test_results_page_figures_exist():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    figures = re.findall(r"!\[[^\]]*\]\(\.\./(reports/[^)]+)\)", page)
    assert figures and all((ROOT / f).is_file() for f in figures), figures


def test_every_file_the_readme_names_exists():
    named = set(re.findall(r"\]\((?!https?:|#)([^)#\s]+)", README))            # links
    named |= {m for m in re.findall(r"`([\w./-]+\.(?:md|yml|yaml|txt|ipynb|py|html))`", README) if "/" in m or "." in m}
    missing = sorted(f for f in named if not (ROOT / f).exists() and f not in ("_site/index.html",))
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_readme_is_a_front_page_with_the_ci_test_command():
    assert len(README) <= 10_000, f"README.md has {len(README)} characters: move detail to docs/ or CONTRIBUTING.md"
    # .ci/run: awk '/Run the tests/{f=1} f&&/^```bash/{getline; print; exit}' README.md
    after = README[README.index("Run the tests"):]
    command = after.split("\n```bash\n", 1)[1].split("\n", 1)[0]
    assert "pytest" in command and "-c requirements-lock.txt" in command, command
