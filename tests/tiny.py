"""The one tiny problem the method's tests share, and the finite differences they check against.

A 2-block conv body with 3 filters on 8×8 two-channel images keeps central differences over
every parameter cheap in float64. The head's and batch norm's biases are drawn non-zero, so no
term of a gradient vanishes by symmetry; the tasks are scaled differently, so per-task batch
statistics differ from whole-batch ones (a bug that mixes them cannot hide).
"""

import torch

from anil.model import ConvBody, make_head


def tiny_problem(seed=0, ways=3, shots=2, tasks=2, dtype=torch.float64, head_cls=None,
                 channels=2, size=8, hidden=3):
    """(body, head, images [tasks, 2·ways·shots, C, H, W], labels [tasks, 2·ways·shots]).

    Labels are in the sampler's layout: class blocks of 2·shots samples (support = even
    positions, query = odd). ``head_cls`` swaps in another head class with the same weights."""
    torch.manual_seed(seed)
    body = ConvBody(in_channels=channels, image_size=size, hidden=hidden, depth=2).to(dtype)
    head = make_head(body.feature_dim, ways).to(dtype)
    if head_cls is not None:
        other = head_cls(body.feature_dim, ways).to(dtype)
        other.load_state_dict(head.state_dict())
        head = other
    with torch.no_grad():
        head.bias.normal_()
        for block in body.blocks:
            block.norm.bias.normal_(0, 0.3)
    images = torch.randn(tasks, 2 * ways * shots, channels, size, size, dtype=dtype)
    images = images * torch.linspace(0.5, 2.0, tasks, dtype=dtype).view(-1, 1, 1, 1, 1)
    labels = torch.arange(ways).repeat_interleave(2 * shots).repeat(tasks, 1)
    return body, head, images, labels


def flat_params(body, head):
    return [*body.parameters(), *head.parameters()]


def central_differences(f, params, eps=1e-6):
    """∂f/∂p for every scalar entry of every parameter, by (f(p+ε) − f(p−ε)) / 2ε."""
    grads = []
    for p in params:
        g = torch.zeros_like(p)
        flat, gflat = p.data.view(-1), g.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = f()
            flat[i] = old - eps
            minus = f()
            flat[i] = old
            gflat[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


def gradients(body, head):
    """The current .grad of every body and head parameter, copied."""
    return [p.grad.clone() for p in [*body.parameters(), *head.parameters()]]


def reference_gradients(body, head, images, labels, alpha, steps, first_order):
    """The readable path's meta-gradient: meta_loss(...).backward() from zero gradients."""
    from anil.algorithm import meta_loss
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    meta_loss(body, head, images, labels, alpha, steps, first_order)[0].backward()
    return gradients(body, head)
