"""The authors' GradAlign training code, transcribed in plain PyTorch: the tests' oracle for
the attacks, the training methods and GradAlignLoss (github.com/tml-epfl/understanding-fast-adv-
training, train.py and utils.py). Each function says where it departs from the authors' code.
Run it in float64 for comparisons."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import LossFn
from ..attention import double_backward_attention
from ..ops.reference import attack_step, random_delta


def input_grad(model, x, y, loss_fn: LossFn = F.cross_entropy, delta=None,
               create_graph=False) -> torch.Tensor:
    """Gradient of loss_fn(model(x + delta), y) with respect to the input (authors'
    get_input_grad). With create_graph the result is differentiable in the parameters.
    Departure: with create_graph the forward runs on an attention backend that can be
    differentiated twice (gradalign_fast.attention; the authors' models have no attention)."""
    delta = torch.zeros_like(x) if delta is None else delta
    delta = delta.detach().clone().requires_grad_(True)
    with double_backward_attention(create_graph):
        loss = loss_fn(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def fgsm(model, x, y, eps, loss_fn=F.cross_entropy, lo=0.0, hi=1.0):
    """FGSM with zero init, step eps: returns (delta, grad at x)."""
    grad = input_grad(model, x, y, loss_fn)
    return attack_step(x, torch.zeros_like(x), grad, eps, eps, lo, hi, True), grad


def fgsm_rs(model, x, y, eps, alpha=None, loss_fn=F.cross_entropy, lo=0.0, hi=1.0,
            generator=None):
    """FGSM from a uniform random start (Wong et al. 2020), alpha = 1.25 eps by default."""
    alpha = 1.25 * eps if alpha is None else alpha
    delta = random_delta(x, eps, lo, hi, True, generator)
    grad = input_grad(model, x, y, loss_fn, delta)
    return attack_step(x, delta, grad, alpha, eps, lo, hi, True)


def nfgsm(model, x, y, eps, alpha=None, noise_mult=2.0, loss_fn=F.cross_entropy, lo=0.0,
          hi=1.0, generator=None):
    """N-FGSM (de Jorge et al. 2022): noise U(+-2 eps), step alpha = eps, no eps-ball
    projection; x + delta is kept in the input box."""
    alpha = eps if alpha is None else alpha
    delta = random_delta(x, noise_mult * eps, lo, hi, False, generator)
    grad = input_grad(model, x, y, loss_fn, delta)
    return attack_step(x, delta, grad, alpha, eps, lo, hi, False)


def pgd(model, x, y, eps, alpha, steps, restarts=1, loss_fn=F.cross_entropy, lo=0.0, hi=1.0,
        generator=None):
    """L-inf PGD with random start and restarts; keeps, per sample, the first delta that
    fools the model (authors' attack_pgd)."""
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for _ in range(restarts):
        delta = random_delta(x, eps, lo, hi, True, generator)
        for _ in range(steps):
            grad = input_grad(model, x, y, loss_fn, delta)
            delta = attack_step(x, delta, grad, alpha, eps, lo, hi, True)
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta), y, reduction="none")
        better = loss > best_loss
        best[better] = delta[better]
        best_loss = torch.where(better, loss, best_loss)
    return best


# ---------------------------------------------------------------- GradAlign
def gradalign_regularizer(model, x, y, eps, lam, grad_clean=None, noise=None,
                          loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """lam * (1 - mean_i cos(grad1_i, grad2_i)), exactly as the authors compute it.

    grad1 = input gradient at x (the FGSM gradient, detached); grad2 = input gradient at
    x + eta, eta ~ U([-eps, eps]^d), not clipped to the input box, with create_graph so the
    regulariser reaches the parameters. Samples where either gradient is zero are left out of
    the mean (boolean indexing, as in the authors' code). Departure: when no sample is left the
    authors' mean is NaN; here the regulariser is 0.
    """
    grad1 = input_grad(model, x, y, loss_fn) if grad_clean is None else grad_clean.detach()
    if noise is None:
        noise = torch.empty_like(x).uniform_(-eps, eps)
    grad2 = input_grad(model, x, y, loss_fn, delta=noise, create_graph=True)
    g1 = grad1.reshape(len(x), -1)
    g2 = grad2.reshape(len(x), -1)
    nnz = (g1.norm(dim=1) != 0) & (g2.norm(dim=1) != 0)
    if not bool(nnz.any()):
        return (grad2.sum() * 0.0) * lam
    g1, g2 = g1[nnz], g2[nnz]
    cos = ((g1 / g1.norm(dim=1, keepdim=True)) * (g2 / g2.norm(dim=1, keepdim=True))).sum(1)
    return lam * (1.0 - cos.mean())


def gradalign_step(model, opt, x, y, eps, lam, loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """One FGSM+GradAlign training step as the authors' train.py takes it (float32, FGSM from
    zero with step eps, the training loss and the regulariser backpropagated together, no
    gradalign_fast op or layer): the plain formulation the benchmarks compare with.
    Returns the detached total loss."""
    model.train()
    delta, grad = fgsm(model, x, y, eps, loss_fn)
    loss = loss_fn(model(x + delta), y)
    loss = loss + gradalign_regularizer(model, x, y, eps, lam, grad, loss_fn=loss_fn)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()
