"""The README's results are the pipeline's: every table and the ablation statement that the report stage wrote into
`reports/` appear in the README verbatim, so a number there cannot drift from the committed results (regenerate them with
`dvc repro`, then copy the files' contents into the README)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["table1.md", "table2.md", "ablation_steps.md", "ablation_statement.md", "environment.md"]


@pytest.mark.parametrize("name", GENERATED)
def test_readme_quotes_the_committed_report(name):
    text = (ROOT / "reports" / name).read_text(encoding="utf-8").strip()
    assert text, f"reports/{name} is empty"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text in readme, f"README.md does not hold reports/{name} as the pipeline wrote it (copy it in after dvc repro)"
