"""The toolkit's AutoAttack (torchattacks' components) against a second implementation, the
Adversarial Robustness Toolbox (skipped where either is not installed).

On a linear classifier the L-inf worst case over the eps-ball and the [0, 1] box is known
exactly (the margin to each class is linear in the perturbation and separable per input), so
both AutoAttacks are held to it with no tolerance; on a small ReLU network, where no ground
truth exists, the two ensembles (ART has no FAB-T and no targeted APGD by default) are held to
each other within TOLERANCE.
"""
import pytest
import torch
import torch.nn as nn

pytest.importorskip("torchattacks")
pytest.importorskip("art")
pytest.importorskip("multiprocess")  # ART's AutoAttack imports it

from gradalign_fast.studies import crosscheck  # noqa: E402

STEPS, QUERIES = 25, 100  # fewer than the standard 100 / 5000: the same on both sides
TOLERANCE = 0.05  # ours vs ART AutoAttack on the ReLU net: 3 of 64 points


def _exact_margin(linear, x, y, eps):
    """[B]: the smallest logit margin y - j over j != y and the eps-ball within the box."""
    w, b = linear.weight.detach(), linear.bias.detach()
    xf = x.flatten(1)
    lo, hi = (-xf).clamp(min=-eps), (1 - xf).clamp(max=eps)  # each input's feasible delta
    v = w[y][:, None, :] - w[None]  # [B, classes, inputs]
    margin = ((v * xf[:, None]).sum(-1) + (b[y][:, None] - b[None])
              + (v.clamp(min=0) * lo[:, None] + v.clamp(max=0) * hi[:, None]).sum(-1))
    margin[torch.arange(len(y)), y] = float("inf")
    return margin.min(1).values


def _points(model, n=64):
    x = torch.rand(n, 1, 12, 12)  # ART's Square needs images larger than its smallest tile
    with torch.no_grad():
        return x, model(x).argmax(1)


def test_both_autoattacks_find_the_exact_robust_set_of_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10)).eval()
    x, y = _points(model)
    eps = 0.03
    margin = _exact_margin(model[1], x, y, eps)
    clear = margin.abs() > 1e-4  # points on the decision boundary are left out
    masks, _ = crosscheck.robust_sets(model, x, y, eps, steps=STEPS, queries=QUERIES)
    exact = margin > 0
    assert 0 < exact.sum() < len(y) and clear.sum() >= len(y) - 2
    for side in ("ours", "art"):
        assert torch.equal(masks[f"{side}/autoattack"][clear], exact[clear]), side
    for name, m in masks.items():  # no attack fools a point no perturbation can fool
        assert not (~m & exact & clear).any(), name


def test_ours_and_art_agree_on_a_relu_network():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x, y = _points(model)
    masks, _ = crosscheck.robust_sets(model, x, y, 0.03, steps=STEPS, queries=QUERIES)
    ours, theirs = (masks[f"{s}/autoattack"].float().mean().item() for s in ("ours", "art"))
    assert 0 < ours < 1 and abs(ours - theirs) <= TOLERANCE
