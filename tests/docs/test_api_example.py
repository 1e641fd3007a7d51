"""The code blocks of docs/python-api.md, run exactly as written there, and what they compute
checked against the library's own functions."""

import re
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from anil import train
from anil.algorithm import adapt_head, head_loss
from anil.run.checkpoint import load_run

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def code_blocks():
    """Every ```python block of the page, in order."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    assert len(blocks) == 4, "docs/python-api.md: expected its four python examples"
    return blocks


@pytest.fixture
def workdir(glyph_root, tmp_path, monkeypatch):
    """A folder laid out like a checkout after  python train.py : data/glyphs and a run in
    runs/glyphs-5w1s (a tiny one), as the examples expect; the examples run in it."""
    (tmp_path / "data").symlink_to(glyph_root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    train.main(["--iterations", "2", "--meta-batch", "2", "--hidden", "8", "--eval-tasks", "2",
                "--val-every", "0", "--device", "cpu", "--out", "runs/glyphs-5w1s"])
    return tmp_path


def run_block(code):
    namespace = {"__name__": "docs_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def test_adapt_a_head_on_your_own_tensors():
    torch.manual_seed(0)
    ns = run_block(code_blocks()[0])
    body, head = ns["body"], ns["head"]
    # the loss is the query loss of the head adapted on the support features
    adapted = adapt_head(head, dict(head.named_parameters()), ns["support_z"], ns["support_y"], 0.5, 10)
    expected = head_loss(head, adapted, ns["query_z"], ns["query_y"])
    torch.testing.assert_close(ns["loss"], expected, rtol=0, atol=0)  # the same operations
    assert 0 <= ns["accuracy"].item() <= 1
    # backward reached every parameter of body and head (the meta-gradient)
    assert all(p.grad is not None for p in [*body.parameters(), *head.parameters()])
    assert head.weight.grad.abs().sum() > 0 and body.blocks[0].conv.weight.grad.abs().sum() > 0


def test_the_adapted_head_and_its_predictions():
    torch.manual_seed(1)
    ns = run_block(code_blocks()[1])
    assert set(ns["adapted"]) == {"weight", "bias"}
    assert not torch.equal(ns["adapted"]["weight"], ns["head"].weight)  # it moved
    assert ns["predicted"].shape == (3,) and set(ns["predicted"].tolist()) <= set(range(5))
    logits = functional_call(ns["head"], ns["adapted"], (ns["z"][5:],))
    assert torch.equal(ns["predicted"], logits.argmax(1))


def test_load_a_trained_run(workdir):
    torch.manual_seed(2)
    ns = run_block(code_blocks()[2])
    body, head, config = load_run(workdir / "runs" / "glyphs-5w1s")
    assert ns["config"] == config and ns["ways"] == 5
    assert all(torch.equal(a, b) for a, b in zip(ns["body"].state_dict().values(),
                                                 body.state_dict().values()))
    # the run's α and test steps, applied to the features of the one body call
    with torch.no_grad():
        z = body(torch.cat([ns["support_x"], ns["query_x"]]))
    adapted = adapt_head(head, dict(head.named_parameters()), z[:5], ns["support_y"],
                         config["inner_lr"], config["test_inner_steps"])
    assert torch.equal(ns["predicted"], functional_call(head, adapted, (z[5:],)).argmax(1))
    assert ns["predicted"].shape == (4,)


def test_meta_train_on_a_task_stream(workdir):
    torch.manual_seed(3)
    ns = run_block(code_blocks()[3])
    assert ns["iteration"] == 2 and ns["sampler"].draws == 12  # 3 meta-batches of 4 tasks
    assert 0 <= ns["accuracy"] <= 1 and ns["loss"] > 0
    assert ns["optimizer"].state  # Adam took steps
