"""The commands a user types: console scripts, --help that answers, the device choice."""

import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import torch

from anil.run import cli

ROOT = Path(__file__).resolve().parents[2]


def console_scripts():
    """{name: "module:function"} from pyproject.toml's [project.scripts]."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, re.M))


def test_every_console_script_resolves_and_answers_help(capsys, monkeypatch):
    scripts = console_scripts()
    assert set(scripts) >= {"anil-train", "anil-evaluate", "anil-prepare", "anil-compare",
                            "anil-analysis"}
    for name, target in scripts.items():
        module, function = target.split(":")
        entry = getattr(importlib.import_module(module), function)
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        with pytest.raises(SystemExit) as stop:
            entry()
        out = capsys.readouterr().out
        assert stop.value.code == 0 and ("usage:" in out or "anil-prepare DATASET" in out), name


def test_installed_entry_points_match_pyproject():
    """After pip install ., the installed metadata declares the same scripts."""
    try:
        installed = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
                     if e.name.startswith("anil-")}
    except Exception:  # pragma: no cover - very old importlib.metadata
        pytest.skip("no entry point metadata")
    if not installed:
        pytest.skip("the project is not installed (run from a plain checkout)")
    assert installed == console_scripts()


@pytest.mark.parametrize("module,argv", [
    ("anil.train", []), ("anil.run.evaluate", ["RUN"]), ("anil.paper.compare", []),
    ("anil.paper.analysis", []), ("data_prep.__main__", ["omniglot"]),
    ("data_prep.__main__", ["folder"]), ("data_prep.__main__", ["mini-imagenet"]),
    ("data_prep.__main__", ["glyphs"]), ("data_prep.__main__", ["cifar-fs"]),
])
def test_help_shows_no_empty_default(module, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([*argv, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "usage:" in out
    assert "default: None" not in out and "%(default)" not in out


@pytest.mark.parametrize("builder", ["anil.run.config", "anil.run.evaluate", "anil.paper.compare",
                                     "anil.paper.analysis"])
def test_every_option_is_explained(builder):
    parser = importlib.import_module(builder).build_parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 10, (builder, action.option_strings)


def test_train_help_groups_options_and_shows_preset_values(capsys):
    from anil import train
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    for group in ("dataset and task:", "ANIL (inner and outer loop):", "validation and test:",
                  "device and speed", "run folder:", "distributed (under torchrun):", "examples:"):
        assert group in out
    # A preset option names its value per dataset instead of "default: None".
    ways = " ".join(out.split("\n  --ways WAYS", 1)[1].split("--shots", 1)[0].split())
    assert "(preset: 5 for glyphs," in ways and "; 20 for omniglot, omniglot-rot)" in ways


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"),
                                               (False, False, "cpu")])
def test_auto_device_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert cli.resolve_device("auto") == expected
    assert cli.resolve_device("cpu") == "cpu"


def test_an_unavailable_device_is_one_line_naming_what_is_available(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(SystemExit) as stop:
        cli.resolve_device("cuda")
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: --device cuda: no CUDA device is available here; "
                                       "available: cpu, mps\n")


def test_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert cli.set_threads(1) == 1 == torch.get_num_threads()
        assert cli.set_threads(None) == 1  # None leaves the setting alone
    finally:
        torch.set_num_threads(before)


def test_version_is_written_once_and_exported():
    import anil
    assert re.fullmatch(r"\d+\.\d+\.\d+", anil.__version__)
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and not re.search(r"^version\s*=", project, re.M)
    assert 'version = { attr = "anil.__version__" }' in (ROOT / "pyproject.toml").read_text()
    for name in ("ConvBody", "make_head", "TaskSampler", "load_split", "adapt_head", "meta_loss",
                 "meta_train_step", "evaluate", "load_run"):
        assert callable(getattr(anil, name)), name


def test_torchrun_on_mps_is_refused_in_one_line(monkeypatch):
    from anil.run import distributed
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(distributed.DistributedError, match="torchrun with --device mps is not supported"):
        distributed.setup("mps")
