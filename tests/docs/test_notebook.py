"""notebooks/anil_tutorial.ipynb: saved with its outputs, built from the cells of
notebooks/build_tutorial.py, and its code cells run again here, in order, in one namespace,
without Jupyter (its own asserts check the finite differences, the training and the comparison)."""

import base64
import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "anil_tutorial.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return json.loads(NOTEBOOK.read_text())


def code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_the_notebook_is_saved_with_its_outputs(notebook):
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
    cells = code_cells(notebook)
    assert [cell["execution_count"] for cell in cells] == list(range(1, len(cells) + 1))
    assert all(cell["outputs"] for cell in cells), "every code cell was run and printed something"
    pictures = [output["data"]["image/png"] for cell in cells for output in cell["outputs"]
                if output["output_type"] == "display_data" and "image/png" in output["data"]]
    assert len(pictures) >= 2
    for picture in pictures:
        png = base64.b64decode(picture)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(png)) as image:
            image.verify()
        with Image.open(io.BytesIO(png)) as image:
            assert min(image.size) >= 200
    markdown = "".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown")
    for section in ("the-inner-loop", "the-outer-loop-and-the-meta-gradient", "first-order",
                    "batch-norm-per-task", "maml-nil-and-cka"):
        assert f"../docs/design.md#{section}" in markdown


def test_the_notebook_holds_the_cells_of_its_build_script(notebook):
    """The saved notebook was built from build_tutorial.py as it is now (rebuild it after an
    edit: python notebooks/build_tutorial.py)."""
    spec = importlib.util.spec_from_file_location("build_tutorial", ROOT / "notebooks" / "build_tutorial.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)  # defines the cells; runs nothing
    saved = [(cell["cell_type"], "".join(cell["source"])) for cell in notebook["cells"]]
    assert saved == builder.CELLS


def test_the_code_cells_run_in_order_and_reach_their_results(notebook, monkeypatch):
    monkeypatch.chdir(NOTEBOOK.parent)  # where Jupyter runs a notebook
    namespace = {"__name__": "__main__"}
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            for i, cell in enumerate(code_cells(notebook)):
                exec(compile("".join(cell["source"]), f"<notebook code cell {i + 1}>", "exec"), namespace)
    finally:
        if "PICTURES" in namespace:  # the notebook's temporary folder of pictures
            shutil.rmtree(namespace["PICTURES"], ignore_errors=True)
    # key results (the cells assert them too)
    assert namespace["worst"] < 1e-8  # finite differences vs the second-order meta-gradient
    rows = namespace["rows"]
    assert rows[-1]["val_accuracy"] > rows[0]["val_accuracy"] + 0.05
    text = printed.getvalue()
    assert "the second-order meta-gradient is exact" in text and "validation accuracy" in text
