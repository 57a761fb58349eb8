"""Attention and timm models through GradAlignLoss and the double-backprop methods, with no
attention backend chosen by the user; the exact path against the authors' formulation
(float64, parameter gradients relative to the whole gradient's norm)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradalign_fast import GradAlignLoss, double_backward as fdb
from gradalign_fast.training import methods
from gradalign_fast.training.step import train_step
from test_gradalign import _both

EPS, LAM = 0.1, 0.7


class _MHABlock(nn.Module):
    """Pre-norm transformer block on [B, L, D] with nn.MultiheadAttention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t):
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]  # the SDPA (and fast-path) route
        return t + self.mlp(self.norm2(t))


class _SDPABlock(_MHABlock):
    """The same block with F.scaled_dot_product_attention on its own q, k, v projections."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.heads = heads
        self.attn = None
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, t):
        b, n, d = t.shape
        q, k, v = self.qkv(self.norm1(t)).view(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)  # each [B, heads, L, D / heads]
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        t = t + self.proj(a)
        return t + self.mlp(self.norm2(t))


class TinyViT(nn.Module):
    """Patch conv, class token, position embedding, an MHA block and an SDPA block, LayerNorm,
    a linear head on the class token. Input [B, 3, 16, 16] -> 16 patches + 1 token."""

    def __init__(self, dim=16, heads=2, patch=4, size=16, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(_MHABlock(dim, heads), _SDPABlock(dim, heads))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # [B, L, D]
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


def _vit(dtype=torch.float64):
    torch.manual_seed(0)
    return TinyViT().to(dtype)


def _data(n=4, size=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    noise = (torch.rand(x.shape, generator=g, dtype=dtype) * 2 - 1) * EPS
    return x, y, noise


def _assert_exact(model, x, y, noise):
    """GradAlignLoss equals the authors' formulation: value to 1e-10, parameter gradient
    within 1e-10 of the whole gradient's norm; returns the regulariser's value."""
    (r1, g1, _), (r2, g2, _) = _both(model, x, y, EPS, LAM, noise=noise)
    flat1, flat2 = (torch.cat([g.reshape(-1) for g in gs]) for gs in (g1, g2))
    assert abs(r1.item() - r2.item()) <= 1e-10 and r1.item() > 0
    assert float((flat1 - flat2).norm()) <= 1e-10 * float(flat2.norm())
    return r1.item()


def test_attention_model_works_through_gradalign_loss_with_no_context():
    """What a user does: a ViT on CPU through GradAlignLoss, float32, default backends.
    Plain PyTorch's double backward of the same forward fails (CPU flash attention): the
    regulariser selects a backend that can be differentiated twice itself."""
    model = _vit(torch.float32)
    x, y, _ = _data(dtype=torch.float32)
    xin = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xin), y), xin, create_graph=True)
    with pytest.raises(RuntimeError, match="scaled_dot_product_flash_attention_for_cpu"):
        g.pow(2).sum().backward()
    model.zero_grad()
    reg = GradAlignLoss(EPS, LAM)(model, x, y)
    reg.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.blocks[1].qkv.weight.grad.abs().sum() > 0
    assert torch.backends.cuda.flash_sdp_enabled()  # the user's selection is restored


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_vit_matches_reference(mode):
    model = getattr(_vit(), mode)()
    _assert_exact(model, *_data())


def test_multihead_attention_fast_path_is_not_taken(monkeypatch):
    """nn.MultiheadAttention's fast path (eval, need_weights=False: a native op with no
    derivative) runs on this model under no_grad, and never inside the regulariser."""
    calls = []
    native = torch._native_multi_head_attention

    def counted(*args, **kw):
        calls.append(1)
        return native(*args, **kw)

    monkeypatch.setattr(torch, "_native_multi_head_attention", counted)
    model = _vit().eval()
    x, y, noise = _data()
    with torch.no_grad():
        model(x)
    assert calls == [1]
    _assert_exact(model, x, y, noise)
    assert calls == [1]


@pytest.mark.parametrize("name", ["gradalign", "cure", "llr"])
def test_double_backprop_methods_train_an_attention_model(name):
    """Every method that differentiates an input gradient again takes a training step on the
    ViT with the default attention backends (CURE and LLR raised before)."""
    kw = {"lam": 0.5} if name in ("gradalign", "cure") else {}
    method = methods.make_method(name, 8 / 255, **kw)
    assert method.double_backprop
    model = _vit(torch.float32)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y, _ = _data(dtype=torch.float32)
    out = train_step(method, model, opt, x, y)
    assert torch.isfinite(out["reg"]) and out["reg"] != 0
    assert not torch.equal(before["blocks.1.qkv.weight"], model.blocks[1].qkv.weight)


# ---------------------------------------------------------------- timm models
# (name, create_model kwargs, input size): small configurations, seconds on one CPU core
TIMM_MODELS = [
    ("resnet10t", {}, 32),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32),
    ("convnext_atto", {}, 32),
    ("efficientnet_b0", {}, 32),
]
BATCHNORM = {"resnet10t", "efficientnet_b0"}


@pytest.mark.parametrize("name, kwargs, size", TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS])
def test_timm_model_matches_reference(name, kwargs, size, monkeypatch):
    """Train mode (BatchNorm models through gradalign_fast.double_backward's fast path,
    counted); the ViT's attention is timm's fused F.scaled_dot_product_attention."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).double().train()
    if name.startswith("vit"):
        assert model.blocks[0].attn.fused_attn
    calls = []
    apply = fdb._BatchNormTrain.apply
    monkeypatch.setattr(fdb._BatchNormTrain, "apply", lambda *a: calls.append(1) or apply(*a))
    _assert_exact(model, *_data(size=size))
    assert bool(calls) == (name in BATCHNORM)
