"""A saved config of the wrong types or absurd sizes (damaged, edited or crafted) is a
CheckpointError before any network is built from it: hidden=10**6 would allocate terabytes,
image_size=10**7 a head of 10**13 weights, hidden="sixty-four" a TypeError deep in torch."""

import pytest
import torch

import anil
from anil.model import ConvBody, make_head
from anil.run import checkpoint
from anil.run.checkpoint import CheckpointError
from tests.in_process import in_process

CONFIG = {"channels": 1, "image_size": 28, "hidden": 4, "ways": 5, "shots": 1, "inner_lr": 0.5,
          "test_inner_steps": 10, "eval_tasks": 10, "seed": 0}


def saved_weights(path, kind="weights", **changes):
    torch.manual_seed(0)
    body = ConvBody(1, 28, hidden=4)
    head = make_head(body.feature_dim, 5)
    obj = {"kind": kind, "body": body.state_dict(), "head": head.state_dict(),
           "config": {**CONFIG, **changes}}
    return checkpoint.save(obj, path)


@pytest.mark.parametrize("changes,message", [
    ({"hidden": 10 ** 6}, r"saved body does not match its config \(blocks.0.conv.weight: saved "
                          r"\[4, 1, 3, 3\], the config's sizes give \[1000000, 1, 3, 3\]\)"),
    ({"image_size": 10 ** 7}, r"saved head does not match its config \(weight: saved \[5, 4\]"),
    ({"channels": 3}, r"saved body does not match its config \(blocks.0.conv.weight"),
    ({"ways": 7}, r"saved head does not match its config \(weight: saved \[5, 4\], the config's "
                  r"sizes give \[7, 4\]\)"),
    ({"hidden": "sixty-four"}, r"config's hidden is 'sixty-four', not a positive whole number"),
    ({"hidden": 4.0}, r"config's hidden is 4.0, not a positive whole number"),
    ({"image_size": 8}, r"config's image_size is 8, not a whole number of at least 16"),
    ({"ways": True}, r"config's ways is True, not a positive whole number"),
    ({"ways": None}, r"config's ways is None"),
    ({"test_inner_steps": 10 ** 8}, r"config's test_inner_steps is 100000000, not a whole number "
                                    r"in 0..1000"),
    ({"inner_lr": float("nan")}, r"config's inner_lr is nan, not a positive number"),
    ({"seed": -1}, r"config's seed is -1"),
])
def test_load_run_refuses_a_bad_config_before_building(tmp_path, monkeypatch, changes, message):
    path = saved_weights(tmp_path / "model.pt", **changes)

    def never(*args, **kwargs):
        raise AssertionError("a network was built from an unchecked config")
    monkeypatch.setattr(checkpoint, "ConvBody", never)
    with pytest.raises(CheckpointError, match=message) as e:
        anil.load_run(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_a_missing_size_and_a_config_that_is_no_dict(tmp_path):
    path = saved_weights(tmp_path / "a.pt")
    obj = checkpoint.load(path)
    del obj["config"]["channels"]
    checkpoint.save(obj, path)
    with pytest.raises(CheckpointError, match=r"config's channels is '\(missing\)'"):
        anil.load_run(path)
    obj["config"] = ["not", "a", "dict"]
    checkpoint.save(obj, path)
    with pytest.raises(CheckpointError, match="its config is list, not a dict"):
        anil.load_run(path)


def test_a_good_config_loads(tmp_path):
    body, head, config = anil.load_run(saved_weights(tmp_path / "model.pt"))
    assert body.feature_dim == 4 and head.weight.shape == (5, 4) and config["hidden"] == 4


def test_evaluate_and_resume_refuse_it_in_one_line(tmp_path, capsys):
    from anil.run import evaluate as evaluate_cli
    saved_weights(tmp_path / "model.pt", hidden=10 ** 6)
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main([str(tmp_path / "model.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "does not match its config" in err[0]
    run = tmp_path / "run"
    run.mkdir()
    saved_weights(run / "checkpoint.pt", kind="checkpoint", hidden="sixty-four")
    code, _, err = in_process(["--resume", run], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "config's hidden is 'sixty-four', not a positive whole number" in err
