"""GradAlignLoss(precision=...) under autocast (gradalign_fast.precision) and the fidelity
command's precision policies."""
import pytest
import torch
import torch.nn as nn

from gradalign_fast import GradAlignLoss, precision
from gradalign_fast.testing.authors_reference import gradalign_regularizer


def _bn_model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).to(dtype)


def _batch(dtype=torch.float32, b=6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (b,), generator=g)
    grad = torch.randn(b, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    noise = (torch.rand(b, 1, 8, 8, generator=g, dtype=torch.float64) * 0.2 - 0.1).to(dtype)
    return x, y, grad, noise


def _value_and_grads(model, prec, amp_dtype=None, dtype=torch.float32):
    x, y, grad, noise = _batch(dtype)
    reg = GradAlignLoss(0.1, 1.0, precision=prec)
    ctx = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else torch.autocast(
        "cpu", enabled=False)
    with ctx:
        value = reg(model, x, y, grad_clean=grad, noise=noise)
    grads = torch.autograd.grad(value, list(model.parameters()))
    return value.detach(), torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_float32_precision_ignores_the_callers_autocast(amp_dtype):
    """precision="float32": the regulariser and its parameter gradient are those of no
    autocast at all, and within float32 rounding of a float64 reference (the authors'
    formulation, gradients compared relative to the whole gradient's norm)."""
    v, g = _value_and_grads(_bn_model(), "float32", amp_dtype)
    v0, g0 = _value_and_grads(_bn_model(), "autocast", None)
    assert torch.equal(v, v0) and torch.equal(g, g0)
    m64 = _bn_model(torch.float64)
    x, y, grad, noise = _batch(torch.float64)
    ref = gradalign_regularizer(m64, x, y, 0.1, 1.0, grad_clean=grad, noise=noise)
    g_ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(ref, list(m64.parameters()))])
    assert abs(float(v) - float(ref.detach())) < 1e-5
    assert float((g.double() - g_ref).norm() / g_ref.norm()) < 1e-5


def _dtypes_seen(model, prec, amp_dtype):
    """{layer type: set of output dtypes} inside the regulariser's call."""
    seen = {}

    def hook(mod, args, out):
        seen.setdefault(type(mod).__name__, set()).add(out.dtype)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.BatchNorm2d, nn.Linear))]
    out = _value_and_grads(model, prec, amp_dtype)
    for h in handles:
        h.remove()
    return seen, out


def test_bn_float32_runs_batchnorm_in_float32_only():
    """bn_float32: BatchNorm computes in float32, the rest of the model stays under autocast
    (its Linear layer still computes in bf16: no silent promotion of the whole model), the
    hooks are gone afterwards and the parameters keep their dtype."""
    model = _bn_model()
    seen, (v, g) = _dtypes_seen(model, "bn_float32", torch.bfloat16)
    assert seen == {"BatchNorm2d": {torch.float32}, "Linear": {torch.bfloat16}}
    seen_plain, _ = _dtypes_seen(model, "autocast", torch.bfloat16)
    assert seen_plain == {"BatchNorm2d": {torch.bfloat16}, "Linear": {torch.bfloat16}}
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(v) and torch.isfinite(g).all()


@pytest.mark.parametrize("prec", precision.REG_PRECISIONS)
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_every_precision_gives_finite_gradients_close_to_float32(prec, amp_dtype):
    """Under bf16/fp16 autocast every choice gives a finite regulariser whose parameter
    gradient points where float32's does (cosine > 0.9 on this small model; the fidelity
    command measures how close on real trajectories)."""
    v, g = _value_and_grads(_bn_model(), prec, amp_dtype)
    v0, g0 = _value_and_grads(_bn_model(), "autocast", None)
    assert torch.isfinite(v) and torch.isfinite(g).all()
    assert float(torch.nn.functional.cosine_similarity(g, g0, dim=0)) > 0.9
    assert abs(float(v - v0)) < 0.05


def test_fp16_inner_loss_is_scaled_by_the_batch_size():
    x = torch.zeros(5, 3)
    assert precision.inner_loss_scale("autocast", x) == 1.0
    with torch.autocast("cpu", dtype=torch.float16):
        assert precision.inner_loss_scale("autocast", x) == 5.0
        assert precision.inner_loss_scale("bn_float32", x) == 5.0
        assert precision.inner_loss_scale("float32", x) == 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.inner_loss_scale("autocast", x) == 1.0


def test_bad_precision_and_policy_names():
    with pytest.raises(ValueError, match="precision must be one of autocast, float32, "
                                         "bn_float32; got 'fp32'"):
        GradAlignLoss(0.1, 1.0, precision="fp32")
    with pytest.raises(ValueError, match="unknown precision policy 'bf32'; choose one of"):
        precision.policy("bf32")
    assert precision.policy("bf16-reg-fp32").amp_dtype == torch.bfloat16
    assert "precision='float32'" in repr(GradAlignLoss(0.1, 1.0, precision="float32"))


def test_fidelity_measures_policies_paired_with_float32(tmp_path):
    """fidelity.measure_precision along a short exact-GradAlign run: float32 against itself
    is exactly 1 (paired draws replay the same randomness), bf16 is below 1 but close."""
    from gradalign_fast.studies import fidelity
    from gradalign_fast.training.trainer import TrainConfig, train

    run = tmp_path / "traj"
    train(TrainConfig(method="gradalign", dataset="mnist_subset", n_train=128, n_monitor=64,
                      n_eval=32, batch_size=64, epochs=1, eval_attacks="clean",
                      eps_warmup_epochs=0, snapshot_every=1, out_dir=str(run),
                      progress=False))
    res = fidelity.measure_precision(run, ["bf16", "bf16-reg-fp32"], draws=2, batch=16)
    rows = {(r["iteration"], r["policy"]): r for r in res["rows"]}
    assert {p for _, p in rows} == {"float32", "bf16", "bf16-reg-fp32"}
    for (it, pol), r in rows.items():
        if pol == "float32":
            assert r["reg_cos"] == pytest.approx(1.0, abs=1e-12)
            assert r["loss_cos"] == pytest.approx(1.0, abs=1e-12)
        else:
            assert 0.9 < r["reg_cos"] < 1.0 and 0.9 < r["loss_cos"] < 1.0
        assert -1 <= r["noise_cos"] <= 1
    table = fidelity.precision_markdown(res)
    assert "`bf16-reg-fp32`" in table and table.count("\n") == 4


def test_fidelity_fp16_gradient_scale_halves_until_finite(monkeypatch):
    """A float16 parameter gradient is loss-scaled like GradScaler's first step; a scale
    that overflows is halved (the graph kept for the retry) until the gradient is finite."""
    from gradalign_fast.studies import fidelity

    monkeypatch.setattr(fidelity, "_FP16_SCALE", 2.0 ** 140)  # overflows float32 at once
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    g = fidelity._scaled_grad((w ** 2).sum(), [w], torch.float16)
    assert torch.equal(g, torch.tensor([3.0, -4.0], dtype=torch.float64))


def test_attack_input_gradients_survive_float16():
    """Under float16 autocast the attacks' input gradient is taken of the batch-size-scaled
    loss: per-sample gradients of ~1e-8 that underflow to 0 unscaled (an FGSM step of 0) keep
    float32's direction; bf16 (float32's range) is left unscaled."""
    from gradalign_fast import attacks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-4)
    x, y = torch.rand(512, 1, 8, 8), torch.randint(0, 10, (512,))
    g32 = attacks.input_gradient(model, x, y)
    with torch.autocast("cpu", dtype=torch.float16):
        g16 = attacks.input_gradient(model, x, y)
        xr = x.clone().requires_grad_(True)
        (raw,) = torch.autograd.grad(nn.functional.cross_entropy(model(xr), y), xr)
    assert float((raw == 0).float().mean()) > 0.5  # what scaling avoids
    cos = nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert float(cos) > 0.99 and g16.dtype == torch.float32
    assert float(g16.norm() / g32.norm()) == pytest.approx(1.0, abs=0.02)
