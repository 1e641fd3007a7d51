"""Part 2 of notebooks/anil_tutorial.ipynb: the implementation step by step, from a task to the
meta-gradient checked against finite differences.

The cells as (kind, source) pairs, in order; notebooks/build_tutorial.py runs them and saves the
notebook with their outputs.
"""

CELLS = [
("markdown", r"""
## 4. The implementation, step by step

### Setup

The project's modules: `anil.model` (the network), `anil.sampler` (tasks), `anil.algorithm` (the
inner and outer loop), `anil.evaluation` (meta-testing), `anil.paper` (MAML, NIL, CKA). Pictures
are drawn with Pillow into a temporary folder and shown inline.
"""),

("code", r'''
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
from anil.paper.feature_reuse import layer_outputs, relative_change
from anil.feature_plane import feature_plane
from anil.paper.cka import linear_cka
from anil.run.metrics import curve_marks, plot_learning_curve
from anil.run.plot import bar_chart, task_grid
from anil.run.plot.features import concept_plot, features_plot
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
'''),

("markdown", r"""
The two hypotheses of section 1 as a picture (a schematic in the spirit of the paper's Figure 1,
drawn with the project's plotting code, `anil.run.plot.features`): from the meta-initialisation,
rapid learning moves body and head far for each task; feature reuse moves the head alone. The
rest of the notebook measures which one happens.
"""),

("code", r'''
display(Image(filename=str(concept_plot(PICTURES / "concept.png"))))
'''),

("markdown", r"""
### A task

A 5-way 1-shot task draws 5 classes of the test split and 2 images of each: one for the support
set, one for the query set. The classes get the labels 0..4 by a **random permutation**, drawn
anew for every task, so a class has no fixed label and the head must be fitted to each task from
its support set. The $2NK$ images are laid out in class blocks with **support and query
interleaved**: the even positions are $S$, the odd positions $Q$; `support_query` splits a task's
images, labels or features ([tasks](../docs/design.md#tasks-support-query-and-labels)). A task is
a pure function of the sampler's seed and the task id.
"""),

("code", r'''
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
'''),

("markdown", r"""
### The body: one call on support and query

$Z = f_\theta(X)$: the body maps each image to a feature vector ($D = 64$ numbers for 28×28
images). It runs **once, on the support and query images together**. The reason is batch norm:
every batch-norm layer normalises with the mean and variance of the batch it is given, at
training and test time alike, and the batch must be one task. Running the support set alone
would give it other statistics, hence other features
([batch norm per task](../docs/design.md#batch-norm-per-task)).

The network below is untrained (seeded); section "Meta-training" trains one.
"""),

("code", r'''
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
'''),

("markdown", r"""
### The inner loop with `torch.func`, one step at a time

$$w^{(s+1)} = w^{(s)} - \alpha\, \nabla_w \mathcal{L}(S; \theta, w^{(s)}), \qquad \mathcal{L}(S; \theta, w) = \frac{1}{n} \sum_j -\log \operatorname{softmax}(W z_j + b)_{y_j}$$

`torch.func.functional_call(head, params, (features,))` runs the head with the tensors of the
dict `params` in place of its own weights, so the head becomes a plain function of its weights;
`anil.algorithm.head_loss` is the loss written that way. `torch.func.grad(head_loss, argnums=1)`
returns a function that computes $\nabla_w \mathcal{L}$ as a dict with the same keys. The inner
loop is then three lines. Below they are run one step at a time with the glyphs preset's
$\alpha = 0.5$ and the test-time $m = 10$ steps, printing the support loss; then checked against the
library's `adapt_head`, which is the same loop.
"""),

("code", r'''
alpha, m = 0.5, 10
grad_fn = grad(head_loss, argnums=1)      # (head, params, features, labels) -> ∇_w L as a dict
w0 = {k: v.detach() for k, v in head.named_parameters()}  # w^(0) = w
w = w0
for s in range(m + 1):
    support_loss = head_loss(head, w, Z_S, y_S)  # L(S; θ, w^(s))
    change = sum(((w[k] - w0[k]) ** 2).sum() for k in w).sqrt()
    print(f"s = {s:2d}   L(S; θ, w^(s)) = {support_loss.item():.4f}   ‖w^(s) − w^(0)‖ = {change.item():.3f}")
    if s < m:
        g = grad_fn(head, w, Z_S, y_S)                  # ∇_w L(S; θ, w^(s))
        w = {k: w[k] - alpha * g[k] for k in w}         # w^(s+1)

w_m = adapt_head(head, w0, Z_S, y_S, alpha, m)          # the library's inner loop
assert all(torch.equal(w[k], w_m[k]) for k in w), "the same loop gives the same head"
'''),

("markdown", r"""
### Score the query set

The adapted head $w^{(m)}$ classifies the query features; the **query loss**
$\mathcal{L}(Q; \theta, w^{(m)})$ is what the outer loop minimises, and the query accuracy is
what meta-testing reports. `adapt_and_score` is the library's "adapt on the support set, score
the query set": the one definition that training, the fast path and evaluation all call.
"""),

("code", r'''
logits = functional_call(head, w_m, (Z_Q,))             # W^(m) z + b^(m) for every query image
query_loss = head_loss(head, w_m, Z_Q, y_Q)             # L(Q; θ, w^(m))
accuracy = (logits.argmax(1) == y_Q).float().mean()
print(f"query labels {y_Q.tolist()}, predicted {logits.argmax(1).tolist()}")
print(f"L(Q; θ, w^(m)) = {query_loss.item():.4f}, query accuracy {accuracy.item():.0%} (chance {1 / ways:.0%})")

loss2, accuracy2 = adapt_and_score(head, w0, Z_S, y_S, Z_Q, y_Q, alpha, m)
assert torch.equal(loss2, query_loss) and torch.equal(accuracy2, accuracy)
'''),

("markdown", r"""
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
"""),

("code", r'''
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
'''),
]
