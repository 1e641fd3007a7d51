"""Part 3 of notebooks/anil_tutorial.ipynb: meta-training, the inner loop in feature space, ANIL
against MAML on the same tasks, where next.

The cells as (kind, source) pairs, in order; notebooks/build_tutorial.py runs them and saves the
notebook with their outputs.
"""

CELLS = [
("markdown", r"""
`python -m anil.explain` prints these quantities for any task and any trained run: the loss at
every inner step, and the meta-gradient's norm per layer in second and first order with the share
of the second-order terms.

### Meta-training

One outer step (`meta_train_step`): draw a meta-batch of $B$ tasks from the training split,
compute each task's query loss after its inner loop ($m = 5$ steps while training), average, one
`backward()`, one Adam step on $(\theta, w)$ with learning rate $\beta$. Every 25 steps the
network is validated: the mean query accuracy over 100 validation tasks, with its 95%
confidence interval $\bar a \pm 1.96\, s / \sqrt{n}$
([evaluation](../docs/design.md#evaluation-and-the-confidence-interval)), 10 inner steps per task
as at test time. This is a short version of `python train.py` (600 steps of 8 tasks there).
"""),

("code", r'''
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
marks = curve_marks({"test_inner_steps": test_steps, "val_tasks": 100, "inner_steps": train_steps})
curve = plot_learning_curve(rows, PICTURES / "curve.png", title="5-way 1-shot glyphs, ANIL", chance=1 / ways,
                            **marks)  # with a caption: why validation sits above meta-train
display(Image(filename=str(curve)))
assert rows[0]["val_accuracy"] > 2 / ways, "the untrained network is far above chance"
assert rows[-1]["val_accuracy"] > rows[0]["val_accuracy"] + 0.05, "meta-training helps"
'''),

("markdown", r"""
The untrained network is already far above chance (20%): random conv features of these simple
glyphs are informative, and the head is adapted on every task. Meta-training lifts the
validation accuracy further within a few dozen outer steps.

### The inner loop in feature space

What does the inner loop do to the task? Take test task 0 again, now through the meta-trained
network: its 10 features $Z$ drawn in the plane of their first two principal components (support
filled, query as rings, coloured by label), and the head's class directions $W_k$ (the direction
in feature space along which class $k$'s logit grows) before the inner loop (thin) and after its
10 steps (thick). The features do not move (ANIL's body is fixed); the head turns its class
directions towards the support points of their class, and a query whose prediction becomes
right is ringed ([`anil.feature_plane`](../anil/feature_plane.py); `python -m anil.explain`
draws the same picture as `features.png`).
"""),

("code", r'''
with torch.no_grad():
    Z = body(X)  # the trained body on test task 0, one call
w0 = {k: v.detach() for k, v in head.named_parameters()}
w_m = adapt_head(head, w0, support_query(Z)[0], y_S, alpha, test_steps)
plane = feature_plane(Z, y, w0, w_m)
print(f"the plane keeps {plane.explained:.0%} of the features' variance; queries right before the inner "
      f"loop: {plane.correct_before.tolist()}, after: {plane.correct_after.tolist()}")
picture = features_plot(PICTURES / "features.png", plane, title=f"test task 0, trained body: {test_steps} inner steps")
display(Image(filename=str(picture)))
'''),

("markdown", r"""
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
"""),

("code", r'''
test_tasks = [sampler.task(i) for i in range(20)]
params = {k: v.detach() for k, v in maml.network_params(body, head).items()}  # φ = (θ, w)
torch.manual_seed(1)
fresh_body, fresh_head = ConvBody(1, 28, hidden=64), make_head(64, ways)
fresh = {k: v.detach() for k, v in maml.network_params(fresh_body, fresh_head).items()}

accuracy = {"ANIL": [], "MAML": [], "NIL": []}
seconds = {"ANIL": 0.0, "MAML": 0.0}
cka = {"MAML before vs after": {}, "trained vs untrained": {}}
moved = {}  # ‖θ_l^(m) − θ_l‖ / ‖θ_l‖ per layer in MAML's inner loop
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
            moved.setdefault(layer, []).append(relative_change(adapted, params, maml.layer_params(body, head, [layer])))
print(f"{len(test_tasks)} test tasks adapted and scored: ANIL in {seconds['ANIL']:.2f} s, MAML in {seconds['MAML']:.2f} s")
assert seconds["MAML"] > 2 * seconds["ANIL"]
'''),

("code", r'''
mean = lambda values: sum(values) / len(values)
for method, values in accuracy.items():
    timing = f", {1000 * seconds[method] / len(test_tasks):.0f} ms per task" if method in seconds else ""
    print(f"{method:<5} query accuracy {mean(values):.1%} over {len(test_tasks)} test tasks{timing}")
print(f"MAML takes {seconds['MAML'] / seconds['ANIL']:.1f}x as long per task as ANIL here")
print("\nlinear CKA    MAML before vs after    trained vs untrained    MAML's change ‖θ_l^(m) − θ_l‖ / ‖θ_l‖")
for layer in before:
    print(f"{layer:<8} {mean(cka['MAML before vs after'][layer]):18.3f} {mean(cka['trained vs untrained'][layer]):23.3f}"
          f" {mean(moved[layer]):26.1%}")
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
'''),

("markdown", r"""
How to read it. **Time**: ANIL's inner loop runs the body once and adapts the $N(D+1) = 325$
numbers of the head; MAML's runs the whole network at every step and differentiates through all
of it, many times slower. **Accuracy**: on 20 tasks (100 query images per method) differences of
a few points are within the noise; adapting every layer buys little over adapting the head, and
NIL, with no head and no inner loop at all, does as well: the meta-learned body does the work.
**Change**: in MAML's inner loop the head's outputs change most and the conv blocks' less, the
first blocks hardly at all. That alone is no evidence of feature reuse: with 10 images per
comparison, the CKA of the first blocks is near 1 even between the trained network and an
untrained one (the control column), so only the later layers are informative at this sample size.

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
"""),
]
