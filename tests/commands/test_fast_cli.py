"""train.py's speed options: the fast default, its closed-form head loop and the readable
reference path agree; the default runs torch.func in training and evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_train(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_fast_default_and_reference_strategy_train_identically(glyph_root, tmp_path):
    common = ["--data-root", str(glyph_root), "--iterations", "3", "--meta-batch", "3",
              "--eval-tasks", "10", "--val-every", "0", "--log-every", "1"]
    summaries = {}
    for name, extra in [("fast", []), ("reference", ["--strategy", "reference"]),
                        ("vmap", ["--strategy", "vmap", "--batch-body", "--no-channels-last"]),
                        ("closed", ["--strategy", "task", "--head-loop", "closed-form"])]:
        r = run_train(*common, *extra, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
        if name == "fast":
            assert "head loop: torch.func (vmap ∘ grad ∘ functional_call), second order" in r.stdout
    # float32 end to end. The first loss is computed before any update and must agree to
    # rounding. After that, Adam's first steps are ±lr whatever the gradient's size, so the conv
    # biases (true gradient 0: batch norm cancels them; measured ~1e-5 relative agreement of all
    # other gradients) move by ±lr on rounding noise and the runs drift apart slowly; the exact
    # equivalence is held in float64 by tests/method/test_fast.py.
    ref = summaries["reference"]
    for name in ("fast", "vmap", "closed"):
        losses = [h["loss"] for h in summaries[name]["history"]]
        ref_losses = [h["loss"] for h in ref["history"]]
        assert losses[0] == pytest.approx(ref_losses[0], rel=1e-5)
        assert losses == pytest.approx(ref_losses, rel=1e-2)
        assert summaries[name]["untrained_test_accuracy"] == pytest.approx(ref["untrained_test_accuracy"], abs=1e-9)
        assert summaries[name]["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=0.03)


@pytest.mark.parametrize("args,message", [
    (["--strategy", "fastest"], "invalid choice: 'fastest'"),
    (["--precision", "float16"], "invalid choice: 'float16'"),
    (["--chunk-size", "0"], "--chunk-size: must be a positive integer"),
    (["--strategy", "reference", "--precision", "bfloat16"], "--strategy reference runs the plain float32 path"),
    (["--strategy", "reference", "--head-loop", "closed-form"], "--head-loop closed-form applies to the fast path"),
    (["--head-loop", "torch"], "invalid choice: 'torch'"),
])
def test_bad_speed_options_are_rejected_with_one_line(args, message, tmp_path):
    r = run_train(*args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert message in r.stderr.strip().splitlines()[-1]


def test_default_training_and_evaluation_call_torch_func_grad(glyph_root, monkeypatch):
    """The code that runs is the torch.func inner loop: count torch.func.grad calls."""
    from anil import algorithm, fast, train
    from anil.run.distributed import Context
    from anil.run.setup import open_data
    calls = []
    real = algorithm.grad
    monkeypatch.setattr(algorithm, "grad", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    counted = {}
    for loop in ("torch.func", "closed-form"):
        args, _ = train.parse_args(["--data-root", str(glyph_root), "--device", "cpu",
                                    "--hidden", "8", *(["--head-loop", loop] if loop != "torch.func" else [])])
        samplers, _ = open_data(args, Context(), None)
        body, head = train.build_network(args, "cpu")
        speed, features_fn = train.choose_speed(body, args)
        images, labels = samplers["train"].batch(args.meta_batch)
        calls.clear()
        fast.meta_gradient(body, head, images, labels, args.inner_lr, args.inner_steps,
                           speed=speed, features_fn=features_fn)  # step 3 of train.py's loop
        counted[loop, "train"] = len(calls)
        calls.clear()
        test = train.make_tester(body, head, args, Context(), features_fn, stop=type(
            "NoStop", (), {"check": lambda self: None})())
        test(samplers["test"], 16, "test")
        counted[loop, "test"] = len(calls)
    assert counted["torch.func", "train"] >= 1 and counted["torch.func", "test"] >= 2  # 2 groups of 8
    assert counted["closed-form", "train"] == counted["closed-form", "test"] == 0
