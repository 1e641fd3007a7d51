"""python -m anil.explain: the quantities it prints against independent computations, its
pictures, and its one-line errors."""

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.func import functional_call, grad

from anil import explain, train, walkthrough
from anil.algorithm import adapt_head, head_loss, task_loss
from anil.data import load_split
from anil.model import ConvBody, make_head
from anil.run import checkpoint, plot
from anil.run.checkpoint import load_run
from anil.run.results import read_results
from anil.sampler import TaskSampler, split_seed, support_query
from tiny import tiny_problem

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]\d+)?")


def tiny_task(seed=0, ways=3, shots=2, dtype=torch.float64):
    """The shared tiny problem (tests/tiny.py) with one task of 12×12 one-channel images."""
    body, head, images, labels = tiny_problem(seed, ways, shots, tasks=1, dtype=dtype, channels=1,
                                              size=12, hidden=4)
    return body, head, images[0], labels[0]


# ------------------------------------------------------------------------ the numbers, in-process


def test_inner_loop_trace_is_adapt_head_step_by_step():
    """Row s holds head_loss and the accuracy at w^(s) = adapt_head(..., steps=s), exactly: one
    step s times is the same sequence of operations as adapt_head's loop. The last row is
    adapt_and_score's query loss, and that is task_loss's."""
    body, head, images, labels = tiny_task()
    alpha, steps = 0.7, 4
    result = walkthrough.walk_through(body, head, images, labels, alpha, steps)
    with torch.no_grad():
        z = body(images)
    (zs, zq), (ys, yq) = support_query(z), support_query(labels)
    w = dict(head.named_parameters())
    assert [row["step"] for row in result.trace] == list(range(steps + 1))
    for s, row in enumerate(result.trace):
        ws = adapt_head(head, w, zs, ys, alpha, steps=s)
        assert row["support_loss"] == head_loss(head, ws, zs, ys).item()
        assert row["query_loss"] == head_loss(head, ws, zq, yq).item()
        assert row["support_accuracy"] == (functional_call(head, ws, (zs,)).argmax(1) == ys).double().mean().item()
        assert row["query_accuracy"] == (functional_call(head, ws, (zq,)).argmax(1) == yq).double().mean().item()
        distance = torch.sqrt(((ws["weight"] - w["weight"]) ** 2).sum() + ((ws["bias"] - w["bias"]) ** 2).sum())
        assert row["distance"] == pytest.approx(distance.item(), rel=1e-12)
    assert result.query_loss == result.trace[-1]["query_loss"]
    assert result.query_accuracy == result.trace[-1]["query_accuracy"]
    loss, accuracy = task_loss(body, head, images, labels, alpha, steps)
    assert result.query_loss == pytest.approx(loss.item(), rel=1e-12)  # float64, the same ops
    assert result.query_accuracy == accuracy.item()
    assert result.shapes["Z"] == (12, body.feature_dim) and result.shapes["Z_S"] == (6, body.feature_dim)


def test_support_loss_decreases_for_a_step_within_the_smoothness_bound():
    """L(S; θ, w) is convex in w with Hessian ⪯ L·I, L = ½ mean_j(‖z_j‖² + 1) (softmax
    cross-entropy has logit Hessian diag(p) − ppᵀ ⪯ ½ I, and ∂logits/∂w = I ⊗ [z; 1]ᵀ). With
    α = 1/L every step lowers the loss by at least (α/2)‖∇_w L‖² > 0: a strict decrease."""
    body, head, images, labels = tiny_task(seed=1)
    with torch.no_grad():
        zs = support_query(body(images))[0]
    alpha = 1 / (0.5 * ((zs ** 2).sum(1) + 1).mean().item())
    losses = [row["support_loss"] for row in walkthrough.walk_through(body, head, images, labels, alpha, 6).trace]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_first_order_gradient_is_the_direct_path_and_second_order_adds_to_every_layer():
    """First order: ∂w^(m)/∂w = I and no path through the inner gradients, so g_first is the
    query loss's gradient at the adapted head held fixed: ∇_w' L(Q; θ, w') for the head and
    ∂L(Q; θ, w')/∂θ for the body, w' = w^(m) (computed here directly). Second order adds the
    Hessian terms to every layer: share > 0; with m = 0 nothing is adapted and the share is 0."""
    body, head, images, labels = tiny_task(seed=2)
    alpha, steps = 0.5, 3
    table = walkthrough.meta_gradient_by_layer(body, head, images, labels, alpha, steps)
    (ys, yq) = support_query(labels)
    with torch.no_grad():
        zs = support_query(body(images))[0]
    adapted = {k: v.detach() for k, v in
               adapt_head(head, dict(head.named_parameters()), zs, ys, alpha, steps).items()}
    query_features = support_query(body(images))[1]
    body_grads = torch.autograd.grad(head_loss(head, adapted, query_features, yq),
                                     list(body.parameters()))
    head_grads = grad(head_loss, argnums=1)(head, adapted, query_features.detach(), yq)
    direct_body = torch.cat([g.reshape(-1) for g in body_grads]).norm().item()
    direct_head = torch.cat([g.reshape(-1) for g in head_grads.values()]).norm().item()
    blocks = [f"conv{i + 1}" for i in range(len(body.blocks))]
    body_first = sum(table[layer]["first"] ** 2 for layer in blocks) ** 0.5
    assert body_first == pytest.approx(direct_body, rel=1e-10)
    assert table["head"]["first"] == pytest.approx(direct_head, rel=1e-10)
    # the layers partition the network
    assert sum(table[layer]["parameters"] for layer in [*blocks, "head"]) == table["all"]["parameters"]
    assert table["all"]["second"] == pytest.approx(
        sum(table[layer]["second"] ** 2 for layer in [*blocks, "head"]) ** 0.5, rel=1e-12)
    assert all(table[layer]["share"] > 1e-3 for layer in table), table
    no_steps = walkthrough.meta_gradient_by_layer(body, head, images, labels, alpha, 0)
    assert all(row["share"] == 0 and row["second"] == row["first"] for row in no_steps.values())


# ------------------------------------------------------------------------------------ the command


def run_explain(capsys, *argv):
    """main(argv) in this process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        explain.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def printed_trace(stdout):
    """The inner-loop table: rows (s, support loss, support acc %, query loss, query acc %, ‖Δw‖)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "L(S; θ, w^(s))" in line and "acc S" in line)
    rows = []
    for line in lines[start + 1:]:
        m = re.fullmatch(r"\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)", line)
        if not m:
            break
        rows.append((int(m[1]), *map(float, m.groups()[1:])))
    return rows


def printed_query(stdout):
    m = re.search(r"L\(Q; θ, w\^\(m\)\) = ([\d.]+)\s+query accuracy ([\d.]+)%", stdout)
    return float(m[1]), float(m[2])


def printed_shares(stdout):
    return {m[1]: float(m[2]) for m in re.finditer(r"^\s+(conv\d|head|all) .*?([\d.]+)%$", stdout, re.M)}


def test_untrained_network_on_glyphs(glyph_root, tmp_path, capsys):
    """Without --run: the seed-0 untrained network, the glyphs preset's α, the test split's
    task 2. Every printed loss equals, to its 4 printed decimals, head_loss at
    adapt_head(..., steps=s) and task_loss computed here from the sampler and the network."""
    out = tmp_path / "pictures"
    code, stdout, stderr = run_explain(capsys, "--data-root", glyph_root, "--task", 2,
                                       "--steps", 3, "--out", out, "--device", "cpu")
    assert code == 0, stderr
    split = load_split(glyph_root / "glyphs", "test")
    task = TaskSampler(split, 5, 1, seed=split_seed(0, "test")).task(2)
    torch.manual_seed(0)
    body = ConvBody(1, 28, hidden=64)
    head = make_head(body.feature_dim, 5)
    for j, c in enumerate(task.classes):
        assert f"label {j} ← class '{split.class_names[c]}'" in stdout
    alpha = 0.5  # the glyphs preset's
    with torch.no_grad():
        z = body(task.images)
    (zs, zq), (ys, yq) = support_query(z), support_query(task.labels)
    rows = printed_trace(stdout)
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    half_unit = 5e-5 + 1e-6  # printed to 4 decimals; float32 sums in another order differ by ~1e-7
    for s, support_loss, _, query_loss, _, _ in rows:
        w = adapt_head(head, dict(head.named_parameters()), zs, ys, alpha, steps=s)
        assert abs(support_loss - head_loss(head, w, zs, ys).item()) < half_unit
        assert abs(query_loss - head_loss(head, w, zq, yq).item()) < half_unit
    loss, accuracy = task_loss(body, head, task.images, task.labels, alpha, 3)
    printed_loss, printed_accuracy = printed_query(stdout)
    assert abs(printed_loss - loss.item()) < half_unit
    assert printed_accuracy == pytest.approx(100 * accuracy.item(), abs=0.05)
    shares = printed_shares(stdout)
    assert set(shares) == {"conv1", "conv2", "conv3", "conv4", "head", "all"}
    assert all(v > 0 for v in shares.values()), shares

    # the pictures: valid PNGs of the sizes their figures have
    title = "glyphs test task 2"
    assert stdout.rstrip().endswith(f"wrote {out / 'task.png'}, {out / 'inner-loop.png'}, "
                                    f"{out / 'features.png'}")
    for name, size in (("task.png", plot.task_figure(task.images, task.labels, title=title).image.size),
                       ("inner-loop.png", (plot.W, plot.H)), ("features.png", (720, 640))):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.size == size, name
            assert len(image.convert("RGB").getcolors(1 << 16)) > 10  # drawn, not blank
    assert sorted(p.name for p in out.iterdir()) == ["features.png", "inner-loop.png",
                                                     "task.png"]  # lock released


def test_no_inner_steps_has_no_second_order_term(glyph_root, tmp_path, capsys):
    code, stdout, stderr = run_explain(capsys, "--data-root", glyph_root, "--steps", 0,
                                       "--out", tmp_path, "--device", "cpu")
    assert code == 0, stderr
    assert [r[0] for r in printed_trace(stdout)] == [0]
    shares = printed_shares(stdout)
    assert len(shares) == 6 and all(v == 0 for v in shares.values()), shares


def test_a_trained_run_is_explained_with_its_weights_alpha_steps_and_test_task(glyph_root, tmp_path, capsys, monkeypatch):
    """--run: the run's weights, α and test steps, task N of its test split (seed 3·seed + 2),
    and its explain/ folder by default."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train.main(["--data-root", str(glyph_root), "--seed", "5", "--ways", "3", "--shots", "2",
                "--hidden", "8", "--iterations", "3", "--meta-batch", "2", "--inner-lr", "0.3",
                "--test-inner-steps", "4", "--eval-tasks", "2", "--val-every", "0",
                "--device", "cpu", "--out", str(run)])
    capsys.readouterr()
    code, stdout, stderr = run_explain(capsys, "--run", run, "--task", 7)
    assert code == 0, stderr
    body, head, config = load_run(run)
    assert (config["inner_lr"], config["test_inner_steps"]) == (0.3, 4)
    split = load_split(glyph_root / "glyphs", "test")
    task = TaskSampler(split, 3, 2, seed=split_seed(5, "test")).task(7)
    assert f"network: trained, {run / 'checkpoint.pt'} (iteration 3)" in stdout  # no validation: no best.pt
    assert 'split_seed(5, "test") = 17' in stdout
    assert "N = 3 ways, K = 2 shots" in stdout and "α = 0.3, m = 4 inner steps" in stdout
    for j, c in enumerate(task.classes):
        assert f"label {j} ← class '{split.class_names[c]}'" in stdout
    loss, _ = task_loss(body, head, task.images, task.labels, 0.3, 4)
    assert abs(printed_query(stdout)[0] - loss.item()) < 5e-5 + 1e-6
    assert [r[0] for r in printed_trace(stdout)] == [0, 1, 2, 3, 4]
    assert (run / "explain" / "task.png").is_file() and (run / "explain" / "inner-loop.png").is_file()
    # a .pt file of the run: its own folder next to it
    code, stdout, stderr = run_explain(capsys, "--run", run / "model.pt", "--steps", 1)
    assert code == 0, stderr
    assert (run / "explain-model" / "task.png").is_file()


def test_the_untrained_network_is_the_one_train_py_starts_from(glyph_root, tmp_path, capsys):
    """An untrained walk-through prints the same numbers as a run of 0 iterations with seed 0."""
    run = tmp_path / "run0"
    train.main(["--data-root", str(glyph_root), "--iterations", "0", "--eval-tasks", "2",
                "--val-every", "0", "--device", "cpu", "--out", str(run)])
    capsys.readouterr()
    common = ["--data-root", glyph_root, "--steps", 2, "--device", "cpu", "--task", 1]
    _, untrained, _ = run_explain(capsys, *common, "--out", tmp_path / "a")
    _, zero, _ = run_explain(capsys, *common, "--run", run, "--out", tmp_path / "b")
    body = lambda text: text[text.index("The task T"):text.index("\nwrote")]
    assert body(untrained) == body(zero)


def one_line_error(capsys, *argv):
    code, stdout, stderr = run_explain(capsys, *argv)
    assert code == 2 and "Traceback" not in stderr
    return stderr.strip().splitlines()[-1]


def test_errors_are_one_line(glyph_root, tmp_path, capsys):
    missing = one_line_error(capsys, "--run", tmp_path / "no-such-run")
    assert missing.startswith(f"error: {tmp_path / 'no-such-run'}") and "does not exist" in missing
    assert "--task: must be 0 or more, got -1" in one_line_error(capsys, "--task", "-1")
    assert "--steps: must be 0 or more, got 'two'" in one_line_error(capsys, "--steps", "two")
    assert "--inner-lr: must be a positive number" in one_line_error(capsys, "--inner-lr", "0")
    file = tmp_path / "a-file"
    file.write_text("mine")
    assert one_line_error(capsys, "--data-root", glyph_root, "--steps", 0, "--out", file) == (
        f"error: --out {file} is a file, not a folder; give a folder")
    assert file.read_text() == "mine"

    # a run whose dataset is not there
    body, head = ConvBody(3, 32, hidden=4), make_head(16, 5)
    config = {"dataset": "cifar-fs", "data": None, "data_root": str(tmp_path / "empty"),
              "channels": 3, "image_size": 32, "hidden": 4, "ways": 5, "shots": 1, "seed": 0,
              "inner_lr": 0.1, "test_inner_steps": 5, "rotate": False}
    checkpoint.save({"kind": "weights", "body": body.state_dict(), "head": head.state_dict(),
                     "config": config}, tmp_path / "model.pt")
    line = one_line_error(capsys, "--run", tmp_path / "model.pt")
    assert line.startswith(f"error: no prepared cifar-fs dataset at {tmp_path / 'empty' / 'cifar-fs'}")
    assert "python -m data_prep.cifar_fs" in line
    assert not (tmp_path / "explain-model").exists()  # nothing written on an error


def test_the_sample_output_in_docs_tutorial_is_what_it_prints(glyph_root, tmp_path, capsys, monkeypatch):
    """docs/tutorial.md shows the output of  python -m anil.explain ; the same text, and the same
    numbers to their printed precision (or 1e-3 relative, for another CPU's float32 rounding)."""
    sample = TUTORIAL.read_text().split("<!-- explain-sample")[1].split("```\n", 1)[1].split("\n```", 1)[0]
    monkeypatch.chdir(tmp_path)  # so that the default --out prints as runs/explain
    code, stdout, stderr = run_explain(capsys, "--data-root", glyph_root, "--device", "cpu")
    assert code == 0, stderr
    printed = stdout.replace(str(glyph_root / "glyphs"), "data/glyphs").rstrip("\n").splitlines()
    documented = sample.splitlines()
    assert len(printed) == len(documented)
    for mine, doc in zip(printed, documented):
        assert NUMBER.split(mine) == NUMBER.split(doc), (mine, doc)
        for a, b in zip(NUMBER.findall(mine), NUMBER.findall(doc)):
            assert float(a) == pytest.approx(float(b), rel=1e-3, abs=2e-4), (mine, doc)


def test_a_maml_model_is_said_to_be_adapted_as_anil(glyph_root, tmp_path, capsys):
    """anil.paper.compare saves MAML models too; the walk-through adapts their head only, and says so."""
    body, head = ConvBody(1, 28, hidden=4), make_head(4, 5)
    config = {"dataset": "glyphs", "data": None, "data_root": str(glyph_root), "channels": 1,
              "image_size": 28, "hidden": 4, "ways": 5, "shots": 1, "seed": 0, "inner_lr": 0.5,
              "test_inner_steps": 2, "rotate": False, "algorithm": "maml"}
    checkpoint.save({"kind": "weights", "body": body.state_dict(), "head": head.state_dict(),
                     "config": config}, tmp_path / "maml.pt")
    code, stdout, stderr = run_explain(capsys, "--run", tmp_path / "maml.pt", "--device", "cpu")
    assert code == 0, stderr
    assert "trained with MAML, adapted here as ANIL adapts: the head only" in stdout
    assert (tmp_path / "explain-maml" / "inner-loop.png").is_file()
    # feature reuse in numbers: a row per layer, and the same numbers in the results file
    code, stdout, stderr = run_explain(capsys, "--run", tmp_path / "maml.pt", "--device", "cpu",
                                       "--results", tmp_path / "r.json")
    assert code == 0, stderr
    reuse = read_results(tmp_path / "r.json")["results"]["feature_reuse"]
    for layer, row in reuse["maml"].items():
        name = "head (W, b)" if layer == "head" else f"{layer} (conv+bn)"
        printed = re.search(rf"^  {re.escape(name)} +[\d,]+ +([\d.]+)% +([\d.]+)$", stdout, re.M)
        assert float(printed[1]) == pytest.approx(100 * row["relative_change"], abs=5e-4)
        assert float(printed[2]) == pytest.approx(row["cka"], abs=5e-5)
    assert set(reuse["maml"]) == {"conv1", "conv2", "conv3", "conv4", "head"}
    assert "ANIL, head only" in stdout and "MAML's inner loop changed the outputs of" in stdout
