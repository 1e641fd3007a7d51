"""What ``python -m anil.explain`` adds to its walk-through: what the second-order share means for
training, feature reuse in numbers for a MAML-trained network, and the results file.

Printing only: the numbers come from ``anil.explain.meta_gradient_by_layer`` and
``anil.paper.feature_reuse.feature_reuse``.
"""

from __future__ import annotations


def second_order_lines(gradient: dict) -> list[str]:
    """How to read the second-order share: what first-order ANIL would drop, and what it costs
    to keep (docs/design.md#why-anils-second-order-is-cheap)."""
    share = gradient["all"]["share"]
    if share == 0:
        return ["  (m = 0: no inner loop, nothing to differentiate through; both orders agree)"]
    return [f"  What it means: the part that comes from differentiating through the inner loop, "
            f"g_second − g_first, is {100 * share:.0f}% as large as g_second.",
            "  First-order ANIL drops that part, so each outer step goes in another direction; "
            "keeping it is cheap for ANIL,",
            "  because the inner loop lives in the head's N(D+1) numbers "
            "(docs/design.md#why-anils-second-order-is-cheap).",
            "  What dropping it does to accuracy: anil.paper.compare's first-order ANIL row "
            "(docs/paper.md)."]


def reuse_lines(reuse: dict, step_size: float, steps: int) -> list[str]:
    """The feature-reuse table: per layer, how far MAML's inner loop moves it and how much its
    outputs change, beside ANIL's inner loop (the head alone)."""
    lines = ["", f"Feature reuse: what MAML's inner loop (α = {step_size:g}, m = {steps}) does to "
                 f"each layer (docs/design.md#maml-nil-and-cka)",
             "  θ_l: the layer's parameters; θ_l^(m): after MAML's m inner steps on the support "
             "set; CKA: linear CKA of the layer's",
             "  outputs on the task's 2NK images before vs after (1 = the same up to rotation "
             "and scale)",
             "  layer             parameters   ‖θ_l^(m) − θ_l‖ / ‖θ_l‖   CKA before vs after"]
    for layer, row in reuse["maml"].items():
        name = "head (W, b)" if layer == "head" else f"{layer} (conv+bn)"
        lines.append(f"  {name:<16} {row['parameters']:>11,}   {100 * row['relative_change']:20.3f}%"
                     f"   {row['cka']:19.4f}")
    anil = reuse["anil_head"]
    lines += [f"  ANIL, head only  {anil['parameters']:>11,}   {100 * anil['relative_change']:20.3f}%"
              f"   {anil['cka']:19.4f}   (‖w^(m) − w‖ / ‖w‖, the body fixed)"]
    order = sorted(reuse["maml"], key=lambda layer: reuse["maml"][layer]["cka"])
    most, least = order[0], order[-1]
    lines.append(f"  MAML's inner loop changed the outputs of {most} most (CKA "
                 f"{reuse['maml'][most]['cka']:.3f}) and of {least} least (CKA "
                 f"{reuse['maml'][least]['cka']:.3f}): CKA near 1 is feature reuse, far below 1 "
                 f"rapid learning")
    return lines


def results_of(result, context: dict) -> dict:
    """What ``--results FILE`` records: the settings, the query result, the meta-gradient table
    and, for a MAML-trained network, the feature-reuse table."""
    record = {**context, "query_loss": result.query_loss, "query_accuracy": result.query_accuracy,
              "inner_loop": result.trace, "meta_gradient": result.gradient,
              "feature_plane": {"explained": result.plane.explained,
                                "flipped_to_correct": result.plane.flipped_to_correct,
                                "flipped_to_wrong": result.plane.flipped_to_wrong}}
    if result.reuse is not None:
        record["feature_reuse"] = result.reuse
    return record
