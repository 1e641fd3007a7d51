"""Mutants of the core: the algorithm, the fast path, evaluation and distributed training (the
format: mutants.py)."""

from mutants import mutant, SAMPLER, MATH, FAST_GRAD, FAST_EVAL, DIST_UNIT, DIST

# ---------------------------------------------------------------------------- anil/algorithm.py
F = "anil/algorithm.py"

mutant("algorithm/ce-sign", F,
       "return -torch.log_softmax(logits, -1).gather(",
       "return torch.log_softmax(logits, -1).gather(",
       "cross-entropy without its minus sign: the inner loop climbs the loss", MATH)
mutant("algorithm/ce-sum", F,
       ".gather(-1, labels.unsqueeze(-1)).mean()",
       ".gather(-1, labels.unsqueeze(-1)).sum()",
       "cross-entropy summed over the samples instead of averaged (inner step scaled by n)", MATH)
mutant("algorithm/ce-softmax-dim", F,
       "-torch.log_softmax(logits, -1)",
       "-torch.log_softmax(logits, 0)",
       "log-softmax over the samples instead of the classes", MATH)
mutant("algorithm/head-loss-detached-features", F,
       "    logits = functional_call(head, params, (features,))\n    return cross_entropy(",
       "    logits = functional_call(head, params, (features.detach(),))\n    return cross_entropy(",
       "the support features are detached in the inner loss: the mixed ∂²L/∂θ∂w terms vanish", MATH)
mutant("algorithm/inner-ascent", F,
       "params = {k: params[k] - step_size * grads[k] for k in params}",
       "params = {k: params[k] + step_size * grads[k] for k in params}",
       "the inner loop steps up the gradient", MATH)
mutant("algorithm/inner-step-size", F,
       "params = {k: params[k] - step_size * grads[k] for k in params}",
       "params = {k: params[k] - 0.5 * step_size * grads[k] for k in params}",
       "inner steps of α/2", MATH)
mutant("algorithm/only-weight-adapts", F,
       "params = {k: params[k] - step_size * grads[k] for k in params}",
       'params = {k: params[k] - step_size * grads[k] if k == "weight" else params[k] for k in params}',
       "the inner loop updates W but not b", MATH)
mutant("algorithm/first-order-not-detached", F,
       "            grads = {k: g.detach() for k, g in grads.items()}\n",
       "            grads = {k: g for k, g in grads.items()}\n",
       "first-order ANIL keeps the second-order terms (missing .detach())", MATH)
mutant("algorithm/first-order-detaches-params", F,
       "            grads = {k: g.detach() for k, g in grads.items()}\n",
       "            params = {k: p.detach() for k, p in params.items()}\n",
       "first order detaches the adapted head instead of the gradient: no meta-gradient reaches w",
       MATH)
mutant("algorithm/steps-plus-one", F,
       "    for _ in range(steps):\n        grads = grad_fn(",
       "    for _ in range(steps + 1):\n        grads = grad_fn(",
       "one inner step too many", MATH)
mutant("algorithm/steps-minus-one", F,
       "    for _ in range(steps):\n        grads = grad_fn(",
       "    for _ in range(1, steps):\n        grads = grad_fn(",
       "one inner step too few", MATH)
mutant("algorithm/scores-support", F,
       "logits = functional_call(head, adapted, (query_features,))",
       "logits = functional_call(head, adapted, (support_features,))",
       "the adapted head is scored on the support set instead of the query set", MATH)
mutant("algorithm/accuracy-on-support-labels", F,
       "accuracy = (logits.argmax(-1) == query_labels)",
       "accuracy = (logits.argmax(-1) == support_labels)",
       "query predictions compared with the support labels", MATH)
mutant("algorithm/body-per-half", F,
       "    support_features, query_features = support_query(\n"
       "        interleaved_task_features(body, images, batch_norm))\n",
       "    support_features, query_features = (body(support_query(images)[0]), "
       "body(support_query(images)[1]))\n",
       "the body runs separately on support and query: batch norm no longer sees the whole task",
       MATH)
mutant("algorithm/swapped-support-query", F,
       "    support_features, query_features = support_query(\n        interleaved",
       "    query_features, support_features = support_query(\n        interleaved",
       "adapted on the query set, scored on the support set", MATH)
mutant("algorithm/meta-loss-sum", F,
       "    return torch.stack(losses).mean(), torch.stack(accuracies).mean()",
       "    return torch.stack(losses).sum(), torch.stack(accuracies).mean()",
       "meta-loss summed over the meta-batch instead of averaged", MATH)
mutant("algorithm/no-zero-grad", F,
       "    optimizer.zero_grad(set_to_none=True)\n    loss, accuracy = meta_loss(",
       "    loss, accuracy = meta_loss(",
       "the reference step never clears .grad: gradients of earlier steps accumulate", FAST_GRAD)
mutant("algorithm/zero-grad-after-backward", F,
       "    loss.backward()\n    return outer_step(",
       "    loss.backward()\n    optimizer.zero_grad(set_to_none=True)\n    return outer_step(",
       "gradients cleared between backward() and the optimizer step: nothing moves", FAST_GRAD)
mutant("algorithm/average-skipped", F,
       "        average([*(p.grad for p in params), stats])\n",
       "        pass\n",
       "data-parallel gradients not averaged across processes", DIST_UNIT)
mutant("algorithm/stats-not-averaged", F,
       "        average([*(p.grad for p in params), stats])\n",
       "        average([p.grad for p in params])\n",
       "the reported loss and accuracy are rank 0's share only, not the meta-batch's", DIST_UNIT)

# ------------------------------------------------------------------ anil/sampler.py: support_query
F = "anil/sampler.py"

mutant("sampler/support-query-offsets-swapped", F,
       "return x[index + (slice(0, None, 2),)], x[index + (slice(1, None, 2),)]",
       "return x[index + (slice(1, None, 2),)], x[index + (slice(0, None, 2),)]",
       "support_query returns (odd, even): support and query exchanged everywhere", SAMPLER)
mutant("sampler/support-query-dim-ignored", F,
       "index = (slice(None),) * dim",
       "index = ()",
       "support_query always splits dimension 0 (a batch of tasks is split by task)", SAMPLER)

# ---------------------------------------------------------------------------------- anil/fast.py
F = "anil/fast.py"

mutant("fast/bn-stats-across-tasks", F,
       "dim=(1, 3, 4), correction=0",
       "dim=(0, 1, 3, 4), correction=0",
       "batched body: batch-norm statistics over every task of the group", FAST_GRAD)
mutant("fast/bn-stats-per-image", F,
       "dim=(1, 3, 4), correction=0",
       "dim=(3, 4), correction=0",
       "batched body: statistics per image (instance norm) instead of per task", FAST_GRAD)
mutant("fast/bn-unbiased-var", F,
       "dim=(1, 3, 4), correction=0",
       "dim=(1, 3, 4), correction=1",
       "batched body: unbiased variance (BatchNorm2d normalises with the biased one)", FAST_GRAD)
mutant("fast/bn-eps-outside-sqrt", F,
       "torch.rsqrt(var + norm.eps)",
       "1 / (var.sqrt() + norm.eps)",
       "batched body: ε added to the standard deviation instead of the variance", FAST_GRAD)
mutant("fast/bn-shift-sign", F,
       "(norm.bias.view(1, 1, -1, 1, 1) - mean * scale)",
       "(norm.bias.view(1, 1, -1, 1, 1) + mean * scale)",
       "batched body: the mean added instead of subtracted", FAST_GRAD)
mutant("fast/batched-features-layout", F,
       "z = x.flatten(1).view(b, m, -1)",
       "z = x.flatten(1).view(m, b, -1).transpose(0, 1)",
       "batched body: features regrouped as [images, tasks] (tasks mixed up)", FAST_GRAD)
mutant("fast/task-body-over-the-group", F,
       "torch.stack([call(x) for x in images])",
       "call(images.flatten(0, 1)).view(len(images), images.shape[1], -1)",
       "per-task body: one call over the whole group, batch norm across tasks", FAST_GRAD)
mutant("fast/autocast-float32", F,
       'if precision == "bfloat16":',
       'if precision in ("bfloat16", "float32"):',
       "float32 precision runs the body under bfloat16 autocast too", FAST_GRAD)
mutant("fast/autocast-float16", F,
       "return torch.autocast(images.device.type, dtype=torch.bfloat16)",
       "return torch.autocast(images.device.type, dtype=torch.float16)",
       "--precision bfloat16 autocasts to float16", "tests/method/test_bfloat16.py")
mutant("fast/in-dims-query-labels", F,
       "in_dims=(None, None, 0, 0, 0, 0, None, None, None)",
       "in_dims=(None, None, 0, 0, 0, None, None, None, None)",
       "torch.func head loop: query labels not split by task", FAST_GRAD)
mutant("fast/closed-form-no-1-over-n", F,
       "- one_hot) / n",
       "- one_hot)",
       "closed form: ∇L without the 1/n of the mean loss", FAST_GRAD)
mutant("fast/closed-form-query-one-hot", F,
       "one_hot = F.one_hot(support_labels, ways)",
       "one_hot = F.one_hot(query_labels, ways)",
       "closed form: the inner gradient uses the query labels", FAST_GRAD)
mutant("fast/closed-form-bias-mean", F,
       "residual.sum(1, keepdim=True)",
       "residual.mean(1, keepdim=True)",
       "closed form: ∇b divided by n twice", FAST_GRAD)
mutant("fast/closed-form-bias-sum-dim", F,
       "residual.sum(1, keepdim=True)",
       "residual.sum(2, keepdim=True)",
       "closed form: ∇b summed over the classes instead of the samples (always ~0)", FAST_GRAD)
mutant("fast/closed-form-not-detached", F,
       "grad_w, grad_b = grad_w.detach(), grad_b.detach()",
       "grad_w, grad_b = grad_w, grad_b",
       "closed form: first order keeps the second-order terms", FAST_GRAD)
mutant("fast/closed-form-bias-not-detached", F,
       "grad_w, grad_b = grad_w.detach(), grad_b.detach()",
       "grad_w, grad_b = grad_w.detach(), grad_b",
       "closed form: first order detaches ∇W but not ∇b", FAST_GRAD)
mutant("fast/head-gradients-mean", F,
       "torch.autograd.grad(scale * losses.sum(),",
       "torch.autograd.grad(losses.mean(),",
       "each group's gradient averaged over the group instead of scaled by 1/B", FAST_GRAD)
mutant("fast/scale-per-group", F,
       "scale=1.0 / meta_batch,",
       "scale=1.0 / len(x),",
       "head gradients scaled by 1/(group size) instead of 1/B", FAST_GRAD)
mutant("fast/features-not-detached", F,
       "detached = features.detach().to(params[\"weight\"].dtype)",
       "detached = features.to(params[\"weight\"].dtype)",
       "the body's features reach the head loop undetached", FAST_GRAD,
       equivalent="head_gradients detaches its features again before the head loop, so the "
                  "graph and every value are the same")
mutant("fast/last-group-dropped", F,
       "for start in range(0, meta_batch, group):",
       "for start in range(0, meta_batch - 1, group):",
       "meta_gradient skips the last task when groups do not divide the meta-batch", FAST_GRAD)
mutant("fast/head-grads-overwritten", F,
       "            head_grads[k] += g_params[k]\n",
       "            head_grads[k] = g_params[k]\n",
       "head gradients of the last group only", FAST_GRAD)
mutant("fast/head-grad-replaces", F,
       "p.grad = head_grads[name] if p.grad is None else p.grad + head_grads[name]",
       "p.grad = head_grads[name]",
       "meta_gradient overwrites the head's .grad instead of accumulating into it (the body's "
       "accumulates)", FAST_GRAD)
mutant("fast/loss-mean-of-groups", F,
       "return torch.cat(losses).mean().item(), torch.cat(accuracies).mean().item()",
       "return torch.stack([l.mean() for l in losses]).mean().item(), torch.cat(accuracies).mean().item()",
       "reported loss is the mean of group means (unequal groups weigh more)", FAST_GRAD)
mutant("fast/train-step-no-zero-grad", F,
       "    optimizer.zero_grad(set_to_none=True)\n    loss, accuracy = meta_gradient(",
       "    loss, accuracy = meta_gradient(",
       "the fast step never clears .grad: gradients of earlier steps accumulate", FAST_GRAD)
mutant("fast/train-step-no-average", F,
       "    return outer_step(optimizer, loss, accuracy, average)",
       "    return outer_step(optimizer, loss, accuracy)",
       "the fast step ignores the data-parallel all-reduce",
       DIST_UNIT)
mutant("fast/default-gpu-per-task-body", F,
       'return Speed(strategy="vmap", batch_body=True, channels_last=True, head_loop=head_loop)',
       'return Speed(strategy="vmap", batch_body=False, channels_last=True, head_loop=head_loop)',
       "the GPU default runs the body task by task", "tests/method/test_fast.py -k default_speeds")
mutant("fast/default-ignores-head-loop", F,
       'return Speed(strategy="chunk", chunk_size=8, channels_last=True, head_loop=head_loop)',
       'return Speed(strategy="chunk", chunk_size=8, channels_last=True)',
       "the CPU default speed drops the requested head loop", "tests/method/test_fast.py -k default_speeds")

# ---------------------------------------------------------------------------- anil/evaluation.py
F = "anil/evaluation.py"

mutant("evaluation/split-tasks-not-images", F,
       "support_query(features, dim=1), support_query(labels, dim=1))",
       "support_query(features, dim=0), support_query(labels, dim=0))",
       "task_accuracies splits the batch of tasks instead of each task's images", FAST_EVAL)
mutant("evaluation/adapt-on-query", F,
       "        _, accuracies = HEAD_LOOP_FUNCTIONS[head_loop](head, params, support_features, support_labels,\n"
       "                                             query_features, query_labels, step_size, steps)",
       "        _, accuracies = HEAD_LOOP_FUNCTIONS[head_loop](head, params, query_features, query_labels,\n"
       "                                             support_features, support_labels, step_size, steps)",
       "task_accuracies adapts on the query set and scores the support set", FAST_EVAL)
mutant("evaluation/body-with-grad", F,
       "    with torch.inference_mode():\n        features = features_fn(images)",
       "    if True:\n        features = features_fn(images)",
       "evaluation runs the body with autograd recording", FAST_EVAL,
       equivalent="only memory and time change: the features are the same numbers, and the head "
                  "loop under no_grad returns accuracies (argmax comparisons) with no graph")
mutant("evaluation/last-partial-group-dropped", F,
       "for start in range(0, len(task_ids), tasks_per_call):",
       "for start in range(0, len(task_ids) - tasks_per_call + 1, tasks_per_call):",
       "the last, partial group of tasks is never evaluated", FAST_EVAL)
mutant("evaluation/task-ids-sorted", F,
       "    task_ids = list(task_ids)\n",
       "    task_ids = sorted(set(task_ids))\n",
       "accuracies_of returns the accuracies in sorted task-id order, not the order asked", FAST_EVAL)
mutant("evaluation/progress-lags", F,
       "progress(len(accuracies), len(task_ids))",
       "progress(start, len(task_ids))",
       "progress reports the tasks done before the group, never reaching the total", FAST_EVAL)
mutant("evaluation/episode-order", F,
       "for z in task_features(body, support_images, query_images, batch_norm))",
       "for z in task_features(body, query_images, support_images, batch_norm))",
       "episode_accuracy takes query features for support ones", FAST_EVAL)
mutant("evaluation/episode-bn-per-half", F,
       "for z in task_features(body, support_images, query_images, batch_norm))",
       "for z in task_features(body, support_images, query_images, \"separate\"))",
       "episode_accuracy: batch norm over support and query separately", FAST_EVAL)

# ---------------------------------------------------------------------- anil/run/distributed.py
F = "anil/run/distributed.py"

mutant("distributed/share-start", F,
       "return slice(ctx.rank * b, (ctx.rank + 1) * b)",
       "return slice(ctx.rank, (ctx.rank + 1) * b)",
       "a process's share starts at r instead of r·b (shares overlap)", DIST_UNIT)
mutant("distributed/gather-row-major", F,
       "in_order = torch.stack(gathered).T.reshape(-1)[:num_tasks]",
       "in_order = torch.stack(gathered).reshape(-1)[:num_tasks]",
       "gathered accuracies read rank by rank instead of back in task order", DIST_UNIT)
mutant("distributed/average-not-divided", F,
       "    flat /= ctx.world_size\n",
       "",
       "the all-reduce sums the gradients without dividing by P", DIST_UNIT)
mutant("distributed/own-ids-only", F,
       "    task_ids = [sampler.next_task_id() for _ in range(meta_batch)]\n"
       "    tasks = [sampler.task(i) for i in task_ids[mine]]",
       "    task_ids = [sampler.next_task_id() for _ in range(mine.stop - mine.start)]\n"
       "    tasks = [sampler.task(i) for i in task_ids]",
       "each process draws only its own B/P task ids: every rank trains on the same tasks", DIST_UNIT)
mutant("distributed/evaluation-ids", F,
       "range(ctx.rank, num_tasks, ctx.world_size)",
       "range(ctx.rank, num_tasks)",
       "sharded evaluation: each process scores every task from its rank on", DIST)
