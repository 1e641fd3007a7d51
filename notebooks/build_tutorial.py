"""Build notebooks/anil_tutorial.ipynb: its cells, written in tutorial_ideas.py, tutorial_steps.py
and tutorial_training.py (next to this file), are executed in one namespace and saved with their
outputs (text and PNG pictures) in nbformat 4 JSON, so that the notebook reads
on a code host without being run.

    python notebooks/build_tutorial.py            # about a minute on a CPU

No Jupyter is needed. Each code cell runs with its printed output captured; a picture shown with
``display(Image(filename=...))`` is saved as an ``image/png`` output, as Jupyter saves it (a stand-in
``IPython.display`` module does that while the cells run here). ``tests/docs/test_notebook.py`` runs the
saved notebook's code cells again and checks that they match the cells of those three files.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "anil_tutorial.ipynb"

# =================================================================================== the cells

PARTS = ("tutorial_ideas.py", "tutorial_steps.py", "tutorial_training.py")


def load_cells() -> list[tuple[str, str]]:
    """The cells of every part, in order, as (kind, source) with surrounding blank lines removed."""
    cells = []
    for name in PARTS:
        spec = importlib.util.spec_from_file_location(name[:-3], HERE / name)
        part = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(part)
        cells += [(kind, source.strip("\n")) for kind, source in part.CELLS]
    return cells


CELLS = load_cells()


# ================================================================================ running them


class _Outputs:
    """The outputs of one cell in the order they appear: stdout text and PNG pictures."""

    def __init__(self):
        self.items = []

    def write(self, text):  # as sys.stdout
        if not text:
            return 0
        if self.items and self.items[-1]["output_type"] == "stream":
            self.items[-1]["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": "stdout", "text": text})
        return len(text)

    def flush(self):
        pass

    def picture(self, png: bytes):
        self.items.append({"output_type": "display_data", "metadata": {}, "data": {
            "image/png": base64.b64encode(png).decode("ascii"),
            "text/plain": "<IPython.core.display.Image object>"}})


def _stand_in_ipython(outputs_of):
    """A minimal ``IPython.display`` that records ``display(Image(filename=...))`` as Jupyter
    does; ``outputs_of()`` is the current cell's _Outputs."""
    display_module = types.ModuleType("IPython.display")

    class Image:
        def __init__(self, filename=None, data=None):
            self.data = Path(filename).read_bytes() if filename is not None else data

    def display(*objects):
        for obj in objects:
            if isinstance(obj, Image):
                outputs_of().picture(obj.data)
            else:
                print(repr(obj), file=outputs_of())

    display_module.Image, display_module.display = Image, display
    package = types.ModuleType("IPython")
    package.display = display_module
    return {"IPython": package, "IPython.display": display_module}


def check_cell(source: str) -> None:
    """A code cell must not end in a bare expression other than a call to print or display:
    Jupyter would show its value, which the saved outputs would then lack."""
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr) and not (isinstance(last.value, ast.Call) and isinstance(
            last.value.func, ast.Name) and last.value.func.id in ("print", "display")):
        raise ValueError(f"a code cell ends in an expression whose value Jupyter would show:\n{source}")


def run_cells(cells):
    """Execute the code cells in one namespace, in notebooks/ as Jupyter would; returns a list of
    (kind, source, outputs) and the seconds the code cells took."""
    namespace = {"__name__": "__main__"}
    current = [None]
    stand_in = _stand_in_ipython(lambda: current[0])
    saved_modules = {name: sys.modules.get(name) for name in stand_in}
    cwd = os.getcwd()
    executed, seconds = [], 0.0
    try:
        sys.modules.update(stand_in)
        os.chdir(HERE)
        for kind, source in cells:
            if kind != "code":
                executed.append((kind, source, None))
                continue
            check_cell(source)
            current[0] = _Outputs()
            start = time.perf_counter()
            with contextlib.redirect_stdout(current[0]):
                exec(compile(source, f"<cell {len(executed)}>", "exec"), namespace)
            seconds += time.perf_counter() - start
            executed.append((kind, source, current[0].items))
    finally:
        os.chdir(cwd)
        if "PICTURES" in namespace:  # the cells' temporary folder: its pictures are in the outputs now
            shutil.rmtree(namespace["PICTURES"], ignore_errors=True)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return executed, seconds


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def notebook_json(executed) -> dict:
    """nbformat 4.5: cells with ids, sources and outputs as lists of lines."""
    cells, count = [], 0
    for i, (kind, source, outputs) in enumerate(executed):
        cell = {"cell_type": kind, "id": f"cell-{i:02d}", "metadata": {}, "source": _lines(source)}
        if kind == "code":
            count += 1
            cell["execution_count"] = count
            cell["outputs"] = [
                {**o, "text": _lines(o["text"])} if o["output_type"] == "stream" else
                {**o, "data": {**o["data"], "text/plain": [o["data"]["text/plain"]]}}
                for o in outputs]
        cells.append(cell)
    return {"cells": cells, "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": f"{sys.version_info.major}.{sys.version_info.minor}",
                          "mimetype": "text/x-python", "file_extension": ".py"}},
        "nbformat": 4, "nbformat_minor": 5}


def main():
    executed, seconds = run_cells(CELLS)
    NOTEBOOK.write_text(json.dumps(notebook_json(executed), indent=1, ensure_ascii=False) + "\n")
    pictures = sum(o["output_type"] == "display_data" for _, _, outs in executed if outs for o in outs)
    print(f"wrote {NOTEBOOK} ({len(executed)} cells, {pictures} pictures); the code cells ran in "
          f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
