"""Part 1 of notebooks/anil_tutorial.ipynb: the question, ANIL vs MAML in equations and in code,
the results.

The cells as (kind, source) pairs, in order; notebooks/build_tutorial.py runs them and saves the
notebook with their outputs.
"""

CELLS = [

("markdown", r"""
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
"""),

("markdown", r"""
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
"""),

("markdown", r"""
## 2. ANIL vs MAML in equations

The network is a **body** $f_\theta$ (four conv blocks, parameters $\theta$) and a linear
**head** $w = (W, b)$ with logits $W f_\theta(x) + b$. A task $T_i$ has a support set $S_i$ and a
query set $Q_i$ of $NK$ images each ($N$ classes, $K$ images per class), and
$\mathcal{L}(S_i; \theta, w)$ is the mean cross-entropy of the network on $S_i$
([notation](../docs/design.md#notation)).

**MAML's inner loop** adapts all the parameters $\varphi = (\theta, w)$, for $s = 0 \dots m-1$:

$$\varphi_i^{(0)} = \varphi, \qquad \varphi_i^{(s+1)} = \varphi_i^{(s)} - \alpha\, \nabla_\varphi \mathcal{L}(S_i; \varphi_i^{(s)})$$

**ANIL's inner loop** keeps the body fixed and adapts the head only
([the inner loop](../docs/design.md#the-inner-loop)):

$$w_i^{(0)} = w, \qquad w_i^{(s+1)} = w_i^{(s)} - \alpha\, \nabla_w \mathcal{L}(S_i; \theta, w_i^{(s)})$$

**The outer loop is the same for both**: minimise the query loss of the adapted networks over a
meta-batch of $B$ tasks, differentiating through the inner loop
([the outer loop](../docs/design.md#the-outer-loop-and-the-meta-gradient)):

$$(\theta, w) \leftarrow (\theta, w) - \beta\, \nabla_{(\theta, w)} \frac{1}{B} \sum_i \mathcal{L}\big(Q_i; \theta, w_i^{(m)}(\theta, w)\big)$$

**What ANIL saves.** The body's features $Z_i = f_\theta(X_i)$ do not change during ANIL's inner
loop, so the body runs **once** per task and the $m$ steps touch only the $N(D+1)$ numbers of the
head. MAML changes the body at every step, so it runs the body $m+1$ times per task and
differentiates twice through all of it. ANIL is MAML whose inner loop adapts $w$ alone: the same
outer loop, a far cheaper inner loop ([MAML, NIL and CKA](../docs/design.md#maml-nil-and-cka)).
The symbols of the paper, of this project and of learn2learn's tutorial and code side by side:
[notation](../docs/design.md#notation-across-the-paper-this-project-and-learn2learn).
"""),

("markdown", r"""
### ANIL and MAML in code

The two inner loops as this project writes them, copied from the source (the docstrings left out
at `...`; `tests/docs/test_code_shown.py` checks that these lines are the source's). ANIL's,
`anil.algorithm.adapt_head`:

<!-- source: anil.algorithm.adapt_head -->
```python
def adapt_head(head: nn.Module, params: Params, features: torch.Tensor, labels: torch.Tensor,
               step_size: float, steps: int, first_order: bool = False) -> Params:
    ...
    grad_fn = grad(head_loss, argnums=1)  # ∇_w L(S; θ, w), a function of the head's parameters
    for _ in range(steps):
        grads = grad_fn(head, params, features, labels)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {k: params[k] - step_size * grads[k] for k in params}
    return params
```

MAML's, `anil.paper.maml.adapt`:

<!-- source: anil.paper.maml.adapt -->
```python
def adapt(body: nn.Module, head: nn.Module, params: Params, images: torch.Tensor,
          labels: torch.Tensor, step_size: float, steps: int, first_order: bool = False,
          adapted: list[str] | None = None, batch_norm: str = "task") -> Params:
    ...
    fixed = {k: v for k, v in params.items() if k not in names}
    support_labels, _ = support_query(labels)

    def support_loss(fast):
        logits = support_logits(body, head, {**fixed, **fast}, images, batch_norm)
        return F.cross_entropy(logits, support_labels)

    grad_fn = grad(support_loss)
    fast = {k: params[k] for k in names}
    for _ in range(steps):
        grads = grad_fn(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {k: fast[k] - step_size * grads[k] for k in fast}
    return {**fixed, **fast}
```

What differs:

1. **The input.** ANIL takes `features`, the support features Z_S that the body computed once
   before the loop; MAML takes `images`.
2. **The loss inside the loop.** ANIL's `head_loss` runs the head alone; MAML's `support_loss`
   calls `support_logits`, i.e. `network_forward(body, head, {**fixed, **fast}, images)`: the
   whole network, at every step (under the default `batch_norm="task"` batch norm sees the whole
   task each time, so it runs on support and query images).
3. **What moves.** ANIL's `params` are the head's W and b, N(D + 1) numbers (325 for a 5-way
   head on 64 features); MAML's `fast` holds every layer (`adapted` names them; all by default).

The update line `p − step_size · grad`, the first-order switch (`.detach()`) and the loop are the
same: ANIL is MAML whose inner loop adapts w alone.
"""),

("markdown", r"""
## 3. Results

<!-- quoted: Raghu et al. 2020, Table 2 and the reported speed-up -->
The paper's Table 2 (test accuracy, %; the paper's "±" is the "mean and standard deviation of
performance over three random initializations", a spread between training runs):

| method | Omniglot 20-way 1-shot | Omniglot 20-way 5-shot | mini-ImageNet 5-way 1-shot | mini-ImageNet 5-way 5-shot |
|---|---|---|---|---|
| MAML | 93.7 ± 0.7 | 96.4 ± 0.1 | 46.9 ± 0.2 | 63.1 ± 0.4 |
| ANIL | 96.2 ± 0.5 | 98.0 ± 0.3 | 46.7 ± 0.4 | 61.5 ± 0.5 |

with ANIL 1.7× faster than MAML per training iteration and 4.1× at inference. ANIL matches
MAML's accuracy for a fraction of its cost.
<!-- end figures -->

<!-- figures: docs/results/compare.json over_seeds -->
This project repeats the comparison on its built-in glyph dataset (5-way 1-shot, three training
runs on a CPU; [docs/paper.md](../docs/paper.md), figures from
[docs/results/compare.json](../docs/results/compare.json)), in the paper's form, mean ± standard
deviation over the three seeds: ANIL 84.7 ± 0.3%, MAML 85.4 ± 0.9%, with ANIL 6.1× faster
per test task (on a loaded CPU, whose training-step ratios varied too much between seeds to quote).
<!-- end figures -->
<!-- figures: docs/results/analysis.json cka_before_after cka_vs_untrained -->
The linear CKA of each layer of the MAML model before vs after its inner loop is 0.997,
0.992, 0.979 and 0.826 for conv1 to conv4, and 0.650 for the head. But with one
task's 10 images per comparison, CKA is high even between the trained and an *untrained*
network (0.998 and 0.985 for conv1 and conv2): at this sample size, the first blocks' values
say little about feature reuse; the head clearly changes most.
<!-- end figures -->

The rest of this notebook builds ANIL from its parts and ends with a small version of this
comparison.
"""),
]
