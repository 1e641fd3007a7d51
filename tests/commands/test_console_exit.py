"""The installed commands can be chained with ``&&``: each exits 0 after a real (tiny) run.

pip's generated wrapper for ``anil-train = "anil.train:main"`` is ``sys.exit(main())``: a
``main`` that returned its result (a summary dict, a (mean, ci) tuple) would print it to stderr
and exit with status 1 after every successful run. The entry points are resolved from the
installed metadata when the project is installed, else from pyproject.toml, and called exactly
the way the wrapper calls them.
"""

import importlib
import importlib.metadata
import sys

import pytest

from tests.commands.test_commands import ROOT, console_scripts

TINY = ["--iterations", "1", "--meta-batch", "2", "--hidden", "4", "--inner-steps", "1",
        "--test-inner-steps", "1", "--eval-tasks", "2", "--device", "cpu", "--threads", "1"]


def entry_point(name):
    """The function the console script ``name`` calls."""
    installed = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    if name in installed:
        return installed[name].load()
    module, function = console_scripts()[name].split(":")
    return getattr(importlib.import_module(module), function)


def wrapper_status(name, argv, monkeypatch, capsys):
    """What the generated script does: sys.argv = [name, *argv]; sys.exit(main())."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        sys.exit(entry_point(name)())
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_installed_commands_exit_0_after_a_real_run(glyph_root, tmp_path, monkeypatch, capsys):
    run, compared = tmp_path / "run", tmp_path / "compared"
    commands = [
        ("anil-train", ["--data-root", glyph_root, *TINY, "--val-tasks", "2", "--out", run]),
        ("anil-evaluate", [run, "--eval-tasks", "2", "--device", "cpu", "--threads", "1"]),
        ("anil-compare", ["--data-root", glyph_root, *TINY, "--out", compared]),
        ("anil-analysis", ["--checkpoint", compared / "anil.pt", "--data-root", glyph_root,
                           "--tasks", "2", "--device", "cpu", "--threads", "1"]),
    ]
    for name, argv in commands:
        code, out, err = wrapper_status(name, argv, monkeypatch, capsys)
        # sys.exit(None) is status 0; sys.exit(a dict) prints it to stderr and is status 1.
        assert code in (None, 0), f"{name} exited {str(code)[:200]}; stderr: {err[-300:]}"
        assert "accuracy" in out, name  # it did run


@pytest.mark.parametrize("name", ["anil-train", "anil-evaluate", "anil-compare", "anil-analysis",
                                  "anil-explain"])
def test_installed_help_names_the_installed_commands(name, monkeypatch, capsys):
    """There is no train.py outside a clone: run as anil-*, --help's examples say anil-*."""
    code, out, _ = wrapper_status(name, ["--help"], monkeypatch, capsys)
    assert code == 0 and f"usage: {name}" in out
    for clone in ("python train.py", "python evaluate.py", "python -m anil."):
        assert clone not in out, (name, clone)
    if "examples:" in out:  # (anil-analysis has none)
        examples = out.split("examples:", 1)[1]
        assert f"  {name} " in examples or f"  {name}\n" in examples, examples
        assert " train.py " not in examples  # torchrun's line: -m anil.train


def test_help_in_a_clone_keeps_the_clone_commands(monkeypatch, capsys):
    from anil import train
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "  python train.py --resume runs/glyphs-5w1s" in capsys.readouterr().out


def test_explain_says_where_the_cited_design_notes_live(monkeypatch, tmp_path):
    from anil import explain
    assert explain.NOTES_FILE.is_file()  # in a clone: the file itself
    assert explain.design_notes() == "docs/design.md"
    monkeypatch.setattr(explain, "NOTES_FILE", tmp_path / "site-packages" / "docs" / "design.md")
    assert "in the anil source repository's docs/ folder, not installed with the package" in \
        explain.design_notes()


def test_readme_own_images_says_clone_and_names_the_installed_commands():
    section = (ROOT / "README.md").read_text().split("## Your own images", 1)[1].split("\n## ", 1)[0]
    assert "In a clone; installed: `anil-prepare folder`, `anil-train`, `anil-evaluate`." in section
    assert {"anil-prepare", "anil-train", "anil-evaluate"} <= set(console_scripts())


def test_the_license_file_is_the_mit_license_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the anil authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
