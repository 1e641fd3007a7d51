"""The README and docs a newcomer reads: short, self-contained, and their example code runs."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "tests/mutation/README.md"]


def test_readme_is_short_and_has_the_two_commands():
    assert len(README) <= 12_000, len(README)
    assert 'pip install . && python train.py' in README
    assert 'pip install ".[test]" && python -m pytest -q' in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install ".[test]" && python -m pytest -q' in ci  # CI runs the README's command


def test_the_readme_python_example_runs_and_backpropagates():
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    loss, body = namespace["loss"], namespace["body"]
    assert torch.isfinite(loss) and loss.ndim == 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters()
               if p.ndim > 1)  # the meta-gradient reached every conv weight


def test_docs_cite_nothing_outside_the_repository_and_links_resolve():
    """No reference to notes outside the repository, and every relative link resolves."""
    for page in PAGES:
        text = page.read_text()
        assert "DESIGN §" not in text and "shared/" not in text, page
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), (page, target)


def test_no_docstring_points_outside_the_repository():
    for file in [*ROOT.glob("anil/**/*.py"), *ROOT.glob("data_prep/**/*.py"),
                 *ROOT.glob("data_prep/splits/*.txt")]:
        text = file.read_text()
        assert "DESIGN" not in text and "shared/" not in text, file
        for section in re.findall(r'docs/design\.md,\s+"([^"]+)"', text):
            section = " ".join(section.split())  # a reference may wrap across lines
            assert f"## {section}\n" in (ROOT / "docs" / "design.md").read_text(), (file, section)


def lines_of(patterns) -> int:
    files = {f for pattern in patterns for f in ROOT.glob(pattern)}
    return sum(len(f.read_text().splitlines()) for f in files)


def test_the_layouts_line_counts_are_the_files():
    """The README's layout table gives each part's size in thousands of lines, to 0.1k (a part
    may grow or shrink by up to 100 lines before its figure must be updated)."""
    programs = ["anil/train.py", "anil/explain.py", "anil/explain_maml.py"]
    parts = {"`anil/`": lines_of(["anil/*.py"]) - lines_of(programs),
             "`anil/paper/`": lines_of(["anil/paper/*.py"]),
             "`anil/run/`": lines_of(["anil/run/**/*.py"]),
             "`anil/train.py`, `anil/explain*.py`": lines_of(programs),
             "`data_prep/`": lines_of(["data_prep/*.py"])}
    layout = README[README.index("## Layout"):]
    for folder, lines in parts.items():
        quoted = re.search(re.escape(f"| {folder} |") + r".*\| (\d+\.\d)k \|", layout)
        assert quoted, folder
        assert abs(float(quoted.group(1)) * 1000 - lines) <= 100, (folder, lines)
