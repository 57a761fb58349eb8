"""FGSM + GradAlign written the plain PyTorch way: the authors' training step (train.py of
github.com/tml-epfl/understanding-fast-adv-training, fp32, FGSM from zero with step eps),
re-typed with no gradalign_fast code. The benchmarks' baseline: what the library is compared to.
"""
import torch
import torch.nn.functional as F


def _input_grad(model, x, y, delta, create_graph):
    """Gradient of the loss at x + delta with respect to delta (the authors' get_input_grad)."""
    delta = delta.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    return torch.autograd.grad(loss, delta, create_graph=create_graph)[0]


def plain_gradalign_step(model, opt, x, y, eps, lam):
    """One training step; x: [B, C, H, W] in [0, 1]. Returns the (detached) total loss."""
    model.train()
    # FGSM from zero; its gradient at x is GradAlign's first gradient.
    delta = torch.zeros_like(x, requires_grad=True)
    loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y)
    grad = torch.autograd.grad(loss, delta)[0].detach()
    delta = torch.clamp(delta.detach() + eps * torch.sign(grad), -eps, eps)
    delta = torch.clamp(x + delta, 0, 1) - x

    loss = F.cross_entropy(model(x + delta), y)

    # GradAlign: gradient at x + eta with create_graph, cosine over nonzero-gradient samples.
    grad2 = _input_grad(model, x, y, torch.empty_like(x).uniform_(-eps, eps), True)
    nnz = (grad.flatten(1).norm(dim=1) != 0) & (grad2.flatten(1).norm(dim=1) != 0)
    g1, g2 = grad[nnz].flatten(1), grad2[nnz].flatten(1)
    cos = ((g1 / g1.norm(dim=1, keepdim=True)) * (g2 / g2.norm(dim=1, keepdim=True))).sum(1)
    loss = loss + lam * (1.0 - cos.mean())

    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()
