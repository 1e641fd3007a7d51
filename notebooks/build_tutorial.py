"""Build notebooks/anil_tutorial.ipynb: its cells are written here, executed in one namespace, and
saved with their outputs (text and PNG pictures) in nbformat 4 JSON, so that the notebook reads
on a code host without being run.

    python notebooks/build_tutorial.py            # about a minute on a CPU

No Jupyter is needed. Each code cell runs with its printed output captured; a picture shown with
``display(Image(filename=...))`` is saved as an ``image/png`` output, as Jupyter saves it (a stand-in
``IPython.display`` module does that while the cells run here). ``tests/docs/test_notebook.py`` runs the
saved notebook's code cells again and checks that they match the cells written here.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "anil_tutorial.ipynb"

CELLS: list[tuple[str, str]] = []


def md(text: str) -> None:
    CELLS.append(("markdown", text.strip("\n")))


def code(text: str) -> None:
    CELLS.append(("code", text.strip("\n")))


# =================================================================================== the cells

md(r"""
# ANIL, step by step

**ANIL** (*Almost No Inner Loop*; Raghu, Raghu, Bengio & Vinyals, *Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML*, ICLR 2020,
[arXiv:1909.09157](https://arxiv.org/abs/1909.09157)) is MAML with the inner loop cut down to the
last layer. This notebook explains the algorithm and then builds it up with this project's code,
one equation at a time: a task, the body, the inner loop, the query loss, the meta-gradient
(checked against finite differences), a short meta-training, and ANIL against MAML on the same
tasks. It follows the path of the learn2learn ANIL tutorial, written for `torch.func` instead of
learn2learn.

It runs on a CPU in under a minute (plus about 20 s the first time, to generate the built-in
glyph dataset). The derivations behind every step are in
[docs/design.md](../docs/design.md); the functions used here are listed in
[docs/python-api.md](../docs/python-api.md).
""")

md(r"""
## 1. The question: rapid learning or feature reuse?

**MAML** (Finn et al., 2017) learns an initialisation of all the parameters of a network from
which a few gradient steps on a new task's few labelled examples (its *support set*) give a good
classifier for that task, scored on the task's *query set*. It has two loops: the **inner loop**
adapts the parameters to one task; the **outer loop** changes the initialisation so that the
inner loop's result does well on the query sets of many tasks.

Why does this work? Two explanations fit:

- **Rapid learning**: the initialisation is primed so that the inner loop makes *large, efficient
  changes* to the network's representations for each task;
- **Feature reuse**: the initialisation already holds *good features*, and the inner loop
  changes them little; the task-specific work happens in the last layer.

The paper tests them on MAML-trained networks in two ways. **Freezing**: at test time, adapt only
the layers after the first k conv blocks; accuracy barely drops even when the whole body is frozen
(its Table 1). **Representation similarity**: compare each layer's outputs before and after the
inner loop (CCA and CKA); the conv layers hardly change, the head does (its §3.2). Feature reuse
dominates. Hence **ANIL**: remove the inner loop from everything but the head, during training
and testing.
""")

md(r"""
## 2. ANIL vs MAML in equations

The network is a **body** $f_\theta$ (four conv blocks, parameters $\theta$) and a linear
**head** $w = (W, b)$ with logits $W f_\theta(x) + b$. A task $T_i$ has a support set $S_i$ and a
query set $Q_i$ of $NK$ images each ($N$ classes, $K$ images per class), and
$\mathcal{L}(S_i; \theta, w)$ is the mean cross-entropy of the network on $S_i$
([notation](../docs/design.md#notation)).

**MAML's inner loop** adapts all the parameters $\varphi = (\theta, w)$, for $s = 0 \dots S-1$:

$$\varphi_i^{(0)} = \varphi, \qquad \varphi_i^{(s+1)} = \varphi_i^{(s)} - \alpha\, \nabla_\varphi \mathcal{L}(S_i; \varphi_i^{(s)})$$

**ANIL's inner loop** keeps the body fixed and adapts the head only
([the inner loop](../docs/design.md#the-inner-loop)):

$$w_i^{(0)} = w, \qquad w_i^{(s+1)} = w_i^{(s)} - \alpha\, \nabla_w \mathcal{L}(S_i; \theta, w_i^{(s)})$$

**The outer loop is the same for both**: minimise the query loss of the adapted networks over a
meta-batch of $B$ tasks, differentiating through the inner loop
([the outer loop](../docs/design.md#the-outer-loop-and-the-meta-gradient)):

$$(\theta, w) \leftarrow (\theta, w) - \beta\, \nabla_{(\theta, w)} \frac{1}{B} \sum_i \mathcal{L}\big(Q_i; \theta, w_i^{(m)}(\theta, w)\big)$$

**What ANIL saves.** The body's features $Z_i = f_\theta(X_i)$ do not change during ANIL's inner
loop, so the body runs **once** per task and the $S$ steps touch only the $N(D+1)$ numbers of the
head. MAML changes the body at every step, so it runs the body $S+1$ times per task and
differentiates twice through all of it. ANIL is MAML whose inner loop adapts $w$ alone: the same
outer loop, a far cheaper inner loop ([MAML, NIL and CKA](../docs/design.md#maml-nil-and-cka)).
""")

md(r"""
## 3. Results

The paper's Table 2 (test accuracy, %, mean ± 95% confidence interval):

| method | Omniglot 20-way 1-shot | Omniglot 20-way 5-shot | mini-ImageNet 5-way 1-shot | mini-ImageNet 5-way 5-shot |
|---|---|---|---|---|
| MAML | 93.7 ± 0.7 | 96.4 ± 0.1 | 46.9 ± 0.2 | 63.1 ± 0.4 |
| ANIL | 96.2 ± 0.5 | 98.0 ± 0.3 | 46.7 ± 0.4 | 61.5 ± 0.5 |

with ANIL 1.7× faster than MAML per training iteration and 4.1× at inference. ANIL matches
MAML's accuracy for a fraction of its cost.

This project repeats the comparison on its built-in glyph dataset (5-way 1-shot, measured on a
CPU; [docs/paper.md](../docs/paper.md)): ANIL 85.3 ± 1.7%, MAML 86.4 ± 1.7%, ANIL 6.9× faster per
training iteration and 10.5× per test task. The linear CKA of each layer of the MAML model before
vs after its inner loop is 0.997, 0.992, 0.979 and 0.826 for conv1 to conv4, and 0.650 for the
head: the first blocks are reused, the head changes most.

The rest of this notebook builds ANIL from its parts and ends with a small version of this
comparison.
""")

md(r"""
## 4. The implementation, step by step

### Setup

The project's modules: `anil.model` (the network), `anil.sampler` (tasks), `anil.algorithm` (the
inner and outer loop), `anil.evaluation` (meta-testing), `anil.paper` (MAML, NIL, CKA). Pictures
are drawn with Pillow into a temporary folder and shown inline.
""")

code(r'''
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad

# The project's root: this folder or one above it (a notebook runs in notebooks/).
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "anil" / "algorithm.py").is_file())
sys.path.insert(0, str(ROOT))

from anil.algorithm import adapt_and_score, adapt_head, head_loss, meta_train_step, task_loss
from anil.evaluation import evaluate
from anil.model import ConvBody, make_head
from anil.paper import maml, nil
from anil.paper.analysis import layer_outputs
from anil.paper.cka import linear_cka
from anil.run.metrics import plot_learning_curve
from anil.run.plot import bar_chart, task_grid
from anil.sampler import TaskSampler, split_seed, support_query
from anil.data import load_split
from data_prep.glyphs import ensure

try:
    from IPython.display import Image, display  # in Jupyter: pictures inline
except ImportError:  # plain Python: say where each picture is
    Image, display = (lambda filename: f"(picture: {filename})"), print

torch.set_num_threads(1)  # small tensors: one thread is as fast, and leaves the other cores alone
PICTURES = Path(tempfile.mkdtemp(prefix="anil-tutorial-"))
dataset = ensure(ROOT / "data")  # the built-in glyphs, generated on first use (about 15 s)
splits = {name: load_split(dataset, name) for name in ("train", "val", "test")}
for name, split in splits.items():
    print(f"{name:<5} {split.num_classes:4d} classes, {len(split.images):5d} images of shape {split.image_shape}")
''')

md(r"""
### A task

A 5-way 1-shot task draws 5 classes of the test split and 2 images of each: one for the support
set, one for the query set. The classes get the labels 0..4 by a **random permutation**, drawn
anew for every task, so a class has no fixed label and the head must be fitted to each task from
its support set. The $2NK$ images are laid out in class blocks with **support and query
interleaved**: the even positions are $S$, the odd positions $Q$; `support_query` splits a task's
images, labels or features ([tasks](../docs/design.md#tasks-support-query-and-labels)). A task is
a pure function of the sampler's seed and the task id.
""")

code(r'''
ways, shots = 5, 1  # N, K
sampler = TaskSampler(splits["test"], ways, shots, seed=split_seed(0, "test"))
task = sampler.task(0)
X, y = task.images, task.labels  # [2NK, C, H, W] in [0, 1], [2NK]
(X_S, X_Q), (y_S, y_Q) = support_query(X), support_query(y)
print(f"X {tuple(X.shape)}, y {y.tolist()}")
print(f"support: X_S {tuple(X_S.shape)}, y_S {y_S.tolist()};  query: X_Q {tuple(X_Q.shape)}, y_Q {y_Q.tolist()}")
for label, c in enumerate(task.classes):
    print(f"label {label} ← class {splits['test'].class_names[c]} (class {c} of the test split)")
display(Image(filename=str(task_grid(X, y, PICTURES / "task.png", title="test task 0: 5-way 1-shot"))))
''')

md(r"""
### The body: one call on support and query

$Z = f_\theta(X)$: the body maps each image to a feature vector ($D = 64$ numbers for 28×28
images). It runs **once, on the support and query images together**. The reason is batch norm:
every batch-norm layer normalises with the mean and variance of the batch it is given, at
training and test time alike, and the batch must be one task. Running the support set alone
would give it other statistics, hence other features
([batch norm per task](../docs/design.md#batch-norm-per-task)).

The network below is untrained (seeded); section "Meta-training" trains one.
""")

code(r'''
torch.manual_seed(0)
body = ConvBody(in_channels=1, image_size=28, hidden=64)  # f_θ
head = make_head(body.feature_dim, ways)                   # w = (W, b)
print(f"body: {sum(p.numel() for p in body.parameters()):,} parameters, D = {body.feature_dim}; "
      f"head: W {tuple(head.weight.shape)}, b {tuple(head.bias.shape)}")

with torch.no_grad():
    Z = body(X)                     # one call on all 2NK images: batch norm sees the whole task
    Z_S, Z_Q = support_query(Z)     # features of the support and the query set
    Z_S_alone = body(X_S)           # what a separate call on the support set would give
print(f"Z {tuple(Z.shape)}: Z_S {tuple(Z_S.shape)}, Z_Q {tuple(Z_Q.shape)}")
print(f"support features from a call of their own differ by "
      f"{((Z_S_alone - Z_S).norm() / Z_S.norm()).item():.1%} (relative norm): not the same model")
''')

md(r"""
### The inner loop with `torch.func`, one step at a time

$$w^{(s+1)} = w^{(s)} - \alpha\, \nabla_w \mathcal{L}(S; \theta, w^{(s)}), \qquad \mathcal{L}(S; \theta, w) = \frac{1}{n} \sum_j -\log \operatorname{softmax}(W z_j + b)_{y_j}$$

`torch.func.functional_call(head, params, (features,))` runs the head with the tensors of the
dict `params` in place of its own weights, so the head becomes a plain function of its weights;
`anil.algorithm.head_loss` is the loss written that way. `torch.func.grad(head_loss, argnums=1)`
returns a function that computes $\nabla_w \mathcal{L}$ as a dict with the same keys. The inner
loop is then three lines. Below they are run one step at a time with the glyphs preset's
$\alpha = 0.5$ and the test-time $S = 10$, printing the support loss; then checked against the
library's `adapt_head`, which is the same loop.
""")

code(r'''
alpha, S = 0.5, 10
grad_fn = grad(head_loss, argnums=1)      # (head, params, features, labels) -> ∇_w L as a dict
w0 = {k: v.detach() for k, v in head.named_parameters()}  # w^(0) = w
w = w0
for s in range(S + 1):
    support_loss = head_loss(head, w, Z_S, y_S)  # L(S; θ, w^(s))
    change = sum(((w[k] - w0[k]) ** 2).sum() for k in w).sqrt()
    print(f"s = {s:2d}   L(S; θ, w^(s)) = {support_loss.item():.4f}   ‖w^(s) − w^(0)‖ = {change.item():.3f}")
    if s < S:
        g = grad_fn(head, w, Z_S, y_S)                  # ∇_w L(S; θ, w^(s))
        w = {k: w[k] - alpha * g[k] for k in w}         # w^(s+1)

w_S = adapt_head(head, w0, Z_S, y_S, alpha, S)          # the library's inner loop
assert all(torch.equal(w[k], w_S[k]) for k in w), "the same loop gives the same head"
''')

md(r"""
### Score the query set

The adapted head $w^{(m)}$ classifies the query features; the **query loss**
$\mathcal{L}(Q; \theta, w^{(m)})$ is what the outer loop minimises, and the query accuracy is
what meta-testing reports. `adapt_and_score` is the library's "adapt on the support set, score
the query set": the one definition that training, the fast path and evaluation all call.
""")

code(r'''
logits = functional_call(head, w_S, (Z_Q,))             # W^(m) z + b^(m) for every query image
query_loss = head_loss(head, w_S, Z_Q, y_Q)             # L(Q; θ, w^(m))
accuracy = (logits.argmax(1) == y_Q).float().mean()
print(f"query labels {y_Q.tolist()}, predicted {logits.argmax(1).tolist()}")
print(f"L(Q; θ, w^(m)) = {query_loss.item():.4f}, query accuracy {accuracy.item():.0%} (chance {1 / ways:.0%})")

loss2, accuracy2 = adapt_and_score(head, w0, Z_S, y_S, Z_Q, y_Q, alpha, S)
assert torch.equal(loss2, query_loss) and torch.equal(accuracy2, accuracy)
''')

md(r"""
### The meta-gradient, checked against finite differences

The outer loop needs $\nabla_{(\theta, w)} \mathcal{L}(Q; \theta, w^{(m)}(\theta, w))$. Because
`torch.func.grad` returns the inner gradients as ordinary differentiable tensors, the adapted head
$w^{(m)}$ is a differentiable function of $\theta$ (through the features) and of $w$, and one
`backward()` flows through every inner step: the **second-order** meta-gradient, whose Hessian
terms the [derivation](../docs/design.md#the-outer-loop-and-the-meta-gradient) spells out.
`task_loss` computes one task's query loss from its images: the body once, then
`adapt_and_score`.

To check it, compare a few coordinates with **central finite differences**
$\big(\mathcal{L}(p + \varepsilon) - \mathcal{L}(p - \varepsilon)\big) / 2\varepsilon$. In float64,
on a tiny body (2 blocks of 4 filters) so that each evaluation is quick, with
$\varepsilon = 10^{-6}$: the truncation error is $O(\varepsilon^2) \approx 10^{-12}$, and the
rounding error is the float64 error of one loss evaluation (at most a few hundred units of
$10^{-16}$ here) divided by $\varepsilon$, about $10^{-10}$ to $10^{-9}$. So the two must agree
to better than $10^{-8}$. The **first-order** meta-gradient (each inner gradient treated as a constant,
[first order](../docs/design.md#first-order)) drops the Hessian terms and visibly disagrees.
""")

code(r'''
torch.manual_seed(0)
tiny_body = ConvBody(1, 28, hidden=4, depth=2).double()
tiny_head = make_head(tiny_body.feature_dim, ways).double()
X64, steps = X.double(), 5
coordinates = [("conv1 weight", tiny_body.blocks[0].conv.weight, (2, 0, 1, 1)),
               ("conv1 bias (batch norm cancels it)", tiny_body.blocks[0].conv.bias, (1,)),
               ("bn1 weight γ", tiny_body.blocks[0].norm.weight, (3,)),
               ("conv2 weight", tiny_body.blocks[1].conv.weight, (0, 3, 2, 0)),
               ("bn2 bias β", tiny_body.blocks[1].norm.bias, (1,)),
               ("head W", tiny_head.weight, (3, 17)),
               ("head b", tiny_head.bias, (2,))]

task_loss(tiny_body, tiny_head, X64, y, alpha, steps)[0].backward()  # second order (the default): .grad
first_order = torch.autograd.grad(task_loss(tiny_body, tiny_head, X64, y, alpha, steps, first_order=True)[0],
                                  [parameter for _, parameter, _ in coordinates])

def finite_difference(parameter, index, eps=1e-6):
    """(L(p + ε) − L(p − ε)) / 2ε for one coordinate of one parameter."""
    original = parameter.data[index].item()
    values = []
    for shift in (eps, -eps):
        parameter.data[index] = original + shift
        with torch.no_grad():
            values.append(task_loss(tiny_body, tiny_head, X64, y, alpha, steps)[0].item())
    parameter.data[index] = original
    return (values[0] - values[1]) / (2 * eps)

print(f"{'coordinate':<36}{'autograd':>14}{'finite diff.':>14}{'|difference|':>14}{'first order':>14}")
worst = 0.0
for (name, parameter, index), first in zip(coordinates, first_order):
    analytic, numeric = parameter.grad[index].item(), finite_difference(parameter, index)
    worst = max(worst, abs(analytic - numeric))
    print(f"{name:<36}{analytic:14.6e}{numeric:14.6e}{abs(analytic - numeric):14.1e}{first[index].item():14.6e}")
assert worst < 1e-8, worst
print(f"largest difference {worst:.1e}: the second-order meta-gradient is exact; first order is not")
''')

md(r"""
`python -m anil.explain` prints these quantities for any task and any trained run: the loss at
every inner step, and the meta-gradient's norm per layer in second and first order with the share
of the second-order terms.

### Meta-training

One outer step (`meta_train_step`): draw a meta-batch of $B$ tasks from the training split,
compute each task's query loss after its inner loop ($S = 5$ steps while training), average, one
`backward()`, one Adam step on $(\theta, w)$ with learning rate $\beta$. Every 25 steps the
network is validated: the mean query accuracy over 100 validation tasks, with its 95%
confidence interval $\bar a \pm 1.96\, s / \sqrt{n}$
([evaluation](../docs/design.md#evaluation-and-the-confidence-interval)), 10 inner steps per task
as at test time. This is a short version of `python train.py` (600 steps of 8 tasks there).
""")

code(r'''
torch.manual_seed(0)
body = ConvBody(1, 28, hidden=64)
head = make_head(body.feature_dim, ways)
optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=3e-3)  # β
train_tasks = TaskSampler(splits["train"], ways, shots, seed=split_seed(0, "train"))
val_tasks = TaskSampler(splits["val"], ways, shots, seed=split_seed(0, "val"))
iterations, meta_batch, train_steps, test_steps = 150, 4, 5, 10

def validate(iteration):
    mean, ci, _ = evaluate(body, head, val_tasks, 100, alpha, test_steps)
    print(f"iteration {iteration:3d}: validation accuracy {mean:.1%} ± {ci:.1%}")
    return {"iteration": iteration, "val_accuracy": mean, "val_ci95": ci}

start = time.perf_counter()
rows, window = [validate(0)], []
for iteration in range(1, iterations + 1):
    images, labels = train_tasks.batch(meta_batch)  # [B, 2NK, C, H, W], [B, 2NK]
    window.append(meta_train_step(body, head, optimizer, images, labels, alpha, train_steps))
    if iteration % 25 == 0:
        row = validate(iteration)
        row["loss"], row["accuracy"] = (sum(v) / len(v) for v in zip(*window))  # mean of the last 25
        rows.append(row)
        window = []
print(f"{iterations} outer steps in {time.perf_counter() - start:.0f} s")
curve = plot_learning_curve(rows, PICTURES / "curve.png", title="5-way 1-shot glyphs, ANIL", chance=1 / ways)
display(Image(filename=str(curve)))
assert rows[0]["val_accuracy"] > 2 / ways, "the untrained network is far above chance"
assert rows[-1]["val_accuracy"] > rows[0]["val_accuracy"] + 0.05, "meta-training helps"
''')

md(r"""
The untrained network is already far above chance (20%): random conv features of these simple
glyphs are informative, and the head is adapted on every task. Meta-training lifts the
validation accuracy further within a few dozen outer steps.

### ANIL vs MAML on the same tasks

Now the paper's comparison in small, on the meta-trained network above and 20 test tasks:

- **ANIL**: adapt the head only (10 steps);
- **MAML's inner loop**: adapt *every* layer (`anil.paper.maml.adapt`, 10 steps of the same
  $\alpha$), re-running the whole network at every step;
- **NIL** (no inner loop, the paper's §5.1): drop the head and label each query image by its
  cosine similarity to the support images' features.

And how much MAML's inner loop changes each layer: the linear CKA of the layer's outputs on the
task's images before and after the inner loop (1 = the same representation up to rotation and
scale; [CKA](../docs/design.md#maml-nil-and-cka)). A control compares the trained network with
a freshly initialised one on the same images, to show what "different" looks like with only 10
images per comparison. (This network was trained with ANIL, so MAML's inner loop is applied to
a network not trained for it; the paper's experiment trains with MAML, and
[docs/paper.md](../docs/paper.md) reports it on this dataset.)
""")

code(r'''
test_tasks = [sampler.task(i) for i in range(20)]
params = {k: v.detach() for k, v in maml.network_params(body, head).items()}  # φ = (θ, w)
torch.manual_seed(1)
fresh_body, fresh_head = ConvBody(1, 28, hidden=64), make_head(64, ways)
fresh = {k: v.detach() for k, v in maml.network_params(fresh_body, fresh_head).items()}

accuracy = {"ANIL": [], "MAML": [], "NIL": []}
seconds = {"ANIL": 0.0, "MAML": 0.0}
cka = {"MAML before vs after": {}, "trained vs untrained": {}}
with torch.no_grad():  # testing; torch.func.grad still takes the inner steps
    for t in test_tasks:
        start = time.perf_counter()
        accuracy["ANIL"].append(task_loss(body, head, t.images, t.labels, alpha, test_steps)[1].item())
        seconds["ANIL"] += time.perf_counter() - start
        start = time.perf_counter()
        adapted = maml.adapt(body, head, params, t.images, t.labels, alpha, test_steps)  # every layer
        query_logits = support_query(maml.network_forward(body, head, adapted, t.images))[1]
        accuracy["MAML"].append((query_logits.argmax(1) == support_query(t.labels)[1]).float().mean().item())
        seconds["MAML"] += time.perf_counter() - start
        accuracy["NIL"].append(nil.task_accuracy(body, t.images, t.labels))
        before = layer_outputs(body, head, params, t.images)
        after = layer_outputs(body, head, adapted, t.images)
        other = layer_outputs(fresh_body, fresh_head, fresh, t.images)
        for layer in before:
            cka["MAML before vs after"].setdefault(layer, []).append(linear_cka(before[layer], after[layer]))
            cka["trained vs untrained"].setdefault(layer, []).append(linear_cka(before[layer], other[layer]))
print(f"{len(test_tasks)} test tasks adapted and scored: ANIL in {seconds['ANIL']:.2f} s, MAML in {seconds['MAML']:.2f} s")
assert seconds["MAML"] > 2 * seconds["ANIL"]
''')

code(r'''
mean = lambda values: sum(values) / len(values)
for method, values in accuracy.items():
    timing = f", {1000 * seconds[method] / len(test_tasks):.0f} ms per task" if method in seconds else ""
    print(f"{method:<5} query accuracy {mean(values):.1%} over {len(test_tasks)} test tasks{timing}")
print(f"MAML takes {seconds['MAML'] / seconds['ANIL']:.1f}x as long per task as ANIL here")
print("\nlinear CKA    MAML before vs after    trained vs untrained")
for layer in before:
    print(f"{layer:<8} {mean(cka['MAML before vs after'][layer]):18.3f} {mean(cka['trained vs untrained'][layer]):23.3f}")
layers = list(before)
chart = bar_chart(PICTURES / "cka.png", layers, {name: [mean(v[l]) for l in layers] for name, v in cka.items()},
                  title="linear CKA per layer, mean over 20 test tasks", ylabel="linear CKA (0 to 1)",
                  ylim=(0, 1), value_format="{value:.2f}")
display(Image(filename=str(chart)))
conv_cka = [mean(cka["MAML before vs after"][layer]) for layer in layers[:-1]]
assert mean(cka["MAML before vs after"]["head"]) < min(conv_cka), "the head changes most"
assert conv_cka[0] > 0.95, "the first block hardly changes"
assert abs(mean(accuracy["MAML"]) - mean(accuracy["ANIL"])) < 0.1, "MAML's inner loop buys little"
assert mean(accuracy["NIL"]) > mean(accuracy["ANIL"]) - 0.1, "NIL does as well"
''')

md(r"""
How to read it. **Time**: ANIL's inner loop runs the body once and adapts the $N(D+1) = 325$
numbers of the head; MAML's runs the whole network at every step and differentiates through all
of it, many times slower. **Accuracy**: on 20 tasks (100 query images per method) differences of
a few points are within the noise; adapting every layer buys little over adapting the head, and
NIL, with no head and no inner loop at all, does as well: the meta-learned body does the work.
**Change**: in MAML's inner loop the head's outputs change most and the conv blocks' less, the
first blocks hardly at all: feature reuse. The control column is a caution: with 10 images per
comparison, the CKA of the first blocks is near 1 even between the trained network and an
untrained one, so only the later layers are informative at this sample size.

## Where next

- `python train.py` trains the full 5-way 1-shot glyph model (about two minutes on a CPU);
  `python -m anil.explain --run runs/glyphs-5w1s` walks one of its test tasks through the
  equations.
- `python -m anil.paper.compare` and `python -m anil.paper.analysis` run the paper's comparisons
  with a MAML-trained model ([docs/paper.md](../docs/paper.md)).
- [docs/design.md](../docs/design.md) derives every equation used here, including the
  meta-gradient's Hessian terms, the closed-form head gradient and the body/head split that makes
  the fast path exact; [docs/python-api.md](../docs/python-api.md) shows the library calls for
  your own tensors.
""")


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
