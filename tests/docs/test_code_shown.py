"""The code docs/tutorial.md and the notebook show as "the source" is the source: every block
marked ``<!-- source: module.function -->`` holds lines of that function as written, in order,
where ``...`` stands for left-out lines (the docstring). An edit of the function that the docs
do not follow fails here."""

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- source: ([\w.]+) -->\n```python\n(.*?)\n```", re.S)


def shown_blocks():
    texts = {"docs/tutorial.md": (ROOT / "docs" / "tutorial.md").read_text()}
    notebook = json.loads((ROOT / "notebooks" / "anil_tutorial.ipynb").read_text())
    texts["notebook"] = "\n".join("".join(cell["source"]) for cell in notebook["cells"]
                                  if cell["cell_type"] == "markdown")
    return [(where, name, block) for where, text in texts.items()
            for name, block in MARKED.findall(text)]


def source_of(dotted):
    module, function = dotted.rsplit(".", 1)
    return inspect.getsource(getattr(importlib.import_module(module), function)).splitlines()


def follows(shown: list[str], source: list[str]) -> bool:
    """Whether ``shown`` is ``source`` with runs of lines replaced by '    ...' lines: each chunk
    between the '...' lines appears contiguously, the chunks in order, the first at the start."""
    chunks, chunk = [], []
    for line in shown:
        if line.strip() == "...":
            chunks.append(chunk)
            chunk = []
        else:
            chunk.append(line)
    chunks.append(chunk)
    position = 0
    for i, chunk in enumerate(chunks):
        found = next((p for p in range(position, len(source) - len(chunk) + 1)
                      if source[p:p + len(chunk)] == chunk), None)
        if found is None or (i == 0 and found != 0):
            return False
        position = found + len(chunk)
    return position == len(source)  # the last chunk ends the function


def test_both_inner_loops_are_shown_in_the_tutorial_and_the_notebook():
    shown = {(where, name) for where, name, _ in shown_blocks()}
    for where in ("docs/tutorial.md", "notebook"):
        assert {(where, "anil.algorithm.adapt_head"), (where, "anil.paper.maml.adapt")} <= shown


@pytest.mark.parametrize("where, name, block", shown_blocks())
def test_a_shown_block_is_the_source(where, name, block):
    assert follows(block.splitlines(), source_of(name)), f"{where}: the {name} shown is not the source"


def test_the_check_catches_an_edit():
    source = source_of("anil.algorithm.adapt_head")
    assert follows(source, source)
    assert not follows([*source[:-1], "    return None"], source)  # a changed line
    assert not follows(source[:-1], source)  # the end left out without '...'
    assert follows([source[0], "    ...", *source[-3:]], source)
