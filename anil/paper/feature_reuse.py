"""Feature reuse in numbers: how far MAML's inner loop moves each layer, beside ANIL's head
(docs/design.md, "MAML, NIL and CKA"; the paper's §3.2 and Figure 1).

For one task, with φ = (θ_1, ..., θ_L, w) the layers' parameters at the meta-learned values and
φ^(m) = ``maml.adapt(φ)`` after m inner steps of MAML (every layer adapted), per layer l:

    relative change   ‖θ_l^(m) − θ_l‖ / ‖θ_l‖        (conv weights, biases and batch-norm γ, β)
    CKA               CKA(h_l(φ), h_l(φ^(m)))        the layer's outputs on the task's 2NK images

and beside them ANIL's inner loop, which moves the head alone: ‖w^(m) − w‖ / ‖w‖ with
w^(m) = ``anil.algorithm.adapt_head(w)``, and the CKA of the logits before and after it.
Rapid learning would show large changes and CKA well below 1 in the body; feature reuse shows
small changes and CKA near 1 there, the head changing most.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from anil.algorithm import adapt_head
from anil.paper import maml
from anil.paper.cka import linear_cka
from anil.sampler import support_query


def layer_outputs(body, head, params: maml.Params, images: torch.Tensor) -> dict:
    """Each layer's output on one task's images with parameters ``params`` (``maml`` names):
    {conv1: [n, C, H, W], ..., head: logits [n, N]}."""
    outputs, x = {}, images
    for i, block in enumerate(body.blocks):
        prefix = f"body.blocks.{i}."
        x = functional_call(block, {k[len(prefix):]: v for k, v in params.items()
                                    if k.startswith(prefix)}, (x,))
        outputs[f"conv{i + 1}"] = x
    head_params = {k[5:]: v for k, v in params.items() if k.startswith("head.")}
    outputs["head"] = functional_call(head, head_params, (x.flatten(1),))
    return outputs


def relative_change(after: dict, before: dict, keys) -> float:
    """‖after − before‖ / ‖before‖ over the tensors ``keys`` of two parameter dicts, flattened."""
    delta = torch.cat([(after[k] - before[k]).reshape(-1) for k in keys])
    base = torch.cat([before[k].reshape(-1) for k in keys])
    return (delta.norm() / base.norm()).item()


def feature_reuse(body, head, images: torch.Tensor, labels: torch.Tensor, step_size: float,
                  steps: int) -> dict:
    """One task's feature-reuse numbers: {"maml": {layer: {"parameters", "relative_change",
    "cka"}}, "anil_head": {"parameters", "relative_change", "cka"}} for layers conv1..convL and
    head. ``images`` hold support and query interleaved; m = ``steps``, α = ``step_size``."""
    with torch.no_grad():  # no outer graph; torch.func.grad still takes the inner steps
        params = {k: v.detach() for k, v in maml.network_params(body, head).items()}
        adapted = maml.adapt(body, head, params, images, labels, step_size, steps)
        before = layer_outputs(body, head, params, images)
        after = layer_outputs(body, head, adapted, images)
        table = {}
        for layer in maml.layer_names(body):
            keys = maml.layer_params(body, head, [layer])
            table[layer] = {"parameters": sum(params[k].numel() for k in keys),
                            "relative_change": relative_change(adapted, params, keys),
                            "cka": linear_cka(before[layer], after[layer])}
        features = body(images)  # ANIL: the body once; its features stay fixed
        w = {k: v.detach() for k, v in head.named_parameters()}
        w_m = adapt_head(head, w, support_query(features)[0], support_query(labels)[0],
                         step_size, steps)
        anil = {"parameters": sum(v.numel() for v in w.values()),
                "relative_change": relative_change(w_m, w, list(w)),
                "cka": linear_cka(functional_call(head, w, (features,)),
                                  functional_call(head, w_m, (features,)))}
    return {"maml": table, "anil_head": anil}

