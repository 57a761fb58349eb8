"""GradAlignLoss: the GradAlign regulariser (Andriushchenko & Flammarion, NeurIPS 2020)."""
from __future__ import annotations

import contextlib
import math
import weakref
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from . import ops
from .approx import check_options, linearity_penalty, random_subset
from .alignment import mean_cosine
from .attacks import (BOUNDS, LossFn, check_bounds, check_eps, check_inputs, input_gradient,
                      model_loss)
from .attention import double_backward_attention
from .double_backward import fast_double_backward
from .precision import check_precision, inner_loss_scale, regulariser_precision

# record_function ranges of one exact call, for `python -m gradalign_fast profile`
PHASES = ("gradalign: forward at x+eta", "gradalign: input gradient (create_graph)",
          "gradalign: cosine op")


def _phase(name: str):
    """record_function(name) while a profiler runs, else nothing: a range has a cost even
    with no profiler running, and this is called on every step."""
    return record_function(name) if torch._C._autograd._profiler_enabled() else \
        contextlib.nullcontext()


def batchnorm_layers(model) -> list | None:
    """The BatchNorm layers of model (their .training is read per call: train/eval can
    change); None for a callable that is not an nn.Module (it cannot be looked into)."""
    if not isinstance(model, nn.Module):
        return None
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class ModelFacts(NamedTuple):
    compiled: nn.Module | None  # the first torch.compile'd module in the model, or None
    batchnorms: list | None  # batchnorm_layers(model)


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_facts(model) -> ModelFacts:
    """What the regulariser and train_step read from a model's module tree, found once per
    model rather than by a tree walk on every step (a model's modules are not expected to
    change between steps); a callable that is not an nn.Module has none."""
    if not isinstance(model, nn.Module):
        return ModelFacts(None, None)
    facts = _FACTS.get(model)
    if facts is None:
        facts = _FACTS[model] = ModelFacts(_compiled_module(model), batchnorm_layers(model))
    return facts


def _fast_layers_pay(batchnorms: list | None) -> bool:
    """Whether gradalign_fast.double_backward is faster than PyTorch's own second derivatives
    for a model with these BatchNorm layers: where one runs in train mode (its double
    backward is what they save; benchmarks/NOTES.md). Without one (e.g. the MNIST CNN) they
    save nothing and add a Python call per layer. A model that cannot be looked into: yes."""
    return batchnorms is None or any(m.training for m in batchnorms)


COMPILE_MESSAGE = (
    "GradAlignLoss: torch.compile cannot double-backward (its aot_autograd backward is not "
    "differentiable; pytorch issue 183603), and GradAlign's parameter gradient is a double "
    "backward. Pass the eager model instead (`model._orig_mod` of a torch.compile'd module; "
    "compiled submodules likewise); on a GPU, "
    "gradalign_fast.training.cuda_graph.CapturedStep removes the launch overhead without "
    "torch.compile.")


def _compiled_module(model):
    """The first torch.compile'd module in model (itself included), or None."""
    if not isinstance(model, nn.Module):
        return None
    return next((m for m in model.modules() if hasattr(m, "_orig_mod")), None)


# What torch.compile'd code raises where GradAlign differentiates it twice: at the input
# gradient with create_graph (donated buffers) or at the parameter gradient (no double backward).
_COMPILE_ERRORS = ("double backward", "donated buffer")


@contextlib.contextmanager
def _compile_errors_explained():
    """Turns torch.compile's failures to double-backward into COMPILE_MESSAGE (compiled code
    inside the model that _compiled_module cannot see)."""
    try:
        yield
    except RuntimeError as e:
        if any(k in str(e) for k in _COMPILE_ERRORS):
            raise RuntimeError(COMPILE_MESSAGE) from e
        raise


def _probe_double_backward(value: torch.Tensor, model) -> None:
    """Runs the parameter gradient of `value` (a double backward) once, keeping the graph, so
    that compiled code fails here, explained, rather than in the caller's backward."""
    params = [p for p in model.parameters() if p.requires_grad] \
        if isinstance(model, nn.Module) else []
    if params and value.requires_grad:
        with _compile_errors_explained():
            torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)


class GradAlignLoss(nn.Module):
    """lam * (1 - mean_i cos(grad_x l(x_i), grad_x l(x_i + eta_i))), eta ~ U([-eps, eps]^d).

    Usage, with the FGSM gradient reused (no extra pass)::

        delta, grad = gradalign_fast.attacks.fgsm(model, x, y, eps)
        ce = F.cross_entropy(model(x + delta), y)
        loss = ce + reg_fn(model, x, y, grad_clean=grad)
        loss.backward()

    Exactly the authors' regulariser: the clean gradient is detached; the gradient at x + eta
    (not clipped to the input box) is taken with create_graph=True, so the parameters receive
    the double-backpropagated gradient; samples where either gradient is zero are left out of
    the mean (the regulariser is 0 when none is left; a NaN gradient makes it NaN, never
    dropped: gradalign_fast.alignment defines the valid samples once, for the regulariser,
    the CO monitor and gradient_alignment). Runs the model in whatever mode it is in
    (train-mode BatchNorm sees the extra forward, as in the authors' code; train-mode Dropout
    draws new masks for it, so the two gradients see different masks, as there too).

    For a model with a train-mode BatchNorm the double backward runs through cheaper exact
    second derivatives of Conv2d, BatchNorm and ReLU (gradalign_fast.double_backward; same
    values as PyTorch's); without one, PyTorch's own are as fast and are used.

    Approximate modes (options; the default, all off, is the exact regulariser above):

    * ``fraction=rho`` (0 < rho <= 1): regularise a random ceil(rho * B) samples of the batch
      (drawn anew each call). Train-mode BatchNorm then normalises the regulariser's forward
      over those samples only. rho = 1 is the exact regulariser. Cost ~ rho x exact's extra.
    * ``every=k`` (int >= 1): regularise on calls 0, k, 2k, ... of this object and return a
      constant 0 (no extra forward or backward) on the others. On regularised calls lambda is
      multiplied by k, so the regulariser's parameter gradient summed over k steps matches k
      exact steps' (its time average is unchanged). k = 1 is exact.
    * ``mode="linearity"``: no double backprop at all. The penalty is
      lam * mean_i |l(x_i + d_i) - l(x_i) - d_i . g_i|, d = eps * sign(g), g = the (detached)
      FGSM gradient: how far the loss along the FGSM step is from its linear prediction
      (see gradalign_fast.approx.linearity_penalty). One first-order forward/backward over [x; x + d].
      Its scale is a loss, not 1 - cos: retune lam. loss_fn must accept reduction="none".
      Combine with ``fraction`` to make it cheaper (fraction=0.25: ~1.3x FGSM's step).

    The options combine (e.g. fraction=0.5, every=2).

    Args:
        eps: radius of the uniform noise, in the units of x (e.g. 8/255 for pixels in [0, 1]).
        lam: weight lambda of the regulariser.
        loss_fn: loss whose input gradients are aligned (default cross-entropy).
        check_finite: check the values of x and y (no NaN/inf, x inside `bounds`, labels in
            range; one device sync per call; disable for CUDA graphs).
        bounds: the box (lo, hi) the inputs x live in, (0, 1) by default (normalisation
            belongs inside the model); x outside it is refused, eps may not exceed its width.
        mode: "exact" (GradAlign) or "linearity" (see above).
        fraction: fraction of the batch regularised (see above).
        every: regularise every k-th call (see above).
        fast_layers: use gradalign_fast.double_backward where it pays (models with a
            train-mode BatchNorm; False: PyTorch's own second derivatives everywhere, same
            values; for comparison).
        low_memory: with fast_layers, recompute ReLU-after-BatchNorm outputs instead of keeping
            them (same values; in a pre-activation ResNet ~25% less peak memory for the
            regulariser at no measurable time cost). False keeps them, for comparison.
        precision: how the regulariser's pass runs under the caller's torch.autocast:
            "autocast" (as the caller says; default), "float32" (autocast off for the forward
            at x + eta, the input gradient and so the double backward), "bn_float32" (its
            BatchNorm layers in float32). See gradalign_fast.precision; docs/results.md has
            what each costs and how far its gradient is from float32's.
    Attributes:
        last_cos: mean cosine of the last regularised exact-mode call over its valid samples
            (detached 0-dim tensor), for monitoring; NaN when no sample was valid; None before
            the first call and in linearity mode.
        last_valid: number of samples that entered that mean.
    """

    def __init__(self, eps: float, lam: float, loss_fn: LossFn = F.cross_entropy,
                 check_finite: bool = True, mode: str = "exact", fraction: float = 1.0,
                 every: int = 1, fast_layers: bool = True, low_memory: bool = True,
                 precision: str = "autocast", bounds=BOUNDS):
        super().__init__()
        self.bounds = check_bounds("GradAlignLoss", bounds)
        eps = check_eps("GradAlignLoss", eps, self.bounds)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise ValueError(f"GradAlignLoss: `lam` must be a finite number, got {lam!r}")
        if lam < 0:
            raise ValueError(f"GradAlignLoss: `lam` must be >= 0, got {lam}")
        if not callable(loss_fn):
            raise TypeError("GradAlignLoss: `loss_fn` must be callable (logits, y) -> loss")
        check_options(mode, fraction, every)
        check_precision("GradAlignLoss", precision)
        self.eps = float(eps)
        self.lam = float(lam)
        self.loss_fn = loss_fn
        self.check_finite = check_finite
        self.mode, self.fraction, self.every = mode, float(fraction), every
        self.fast_layers = bool(fast_layers)
        self.low_memory = bool(low_memory)
        self.precision = precision
        self._calls = 0  # forward calls so far, for `every`
        self._probed = False  # the double backward has been tried once (exact mode)
        self.last_cos: torch.Tensor | None = None
        self.last_valid: torch.Tensor | None = None

    def get_extra_state(self) -> dict:
        """The `every` call counter, so that a resumed run regularises the same steps."""
        return {"calls": self._calls}

    def set_extra_state(self, state: dict) -> None:
        self._calls = int(state["calls"])

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, lam={self.lam}, mode={self.mode!r}, fraction={self.fraction},"
                f" every={self.every}, precision={self.precision!r}")

    def _check(self, model, x, y, grad_clean, noise) -> int | None:
        if model_facts(model).compiled is not None:
            raise TypeError(COMPILE_MESSAGE)
        return check_inputs("GradAlignLoss", model, x, y, self.check_finite, self.bounds,
                            grad_clean=grad_clean, noise=noise)

    def forward(self, model, x: torch.Tensor, y: torch.Tensor,
                grad_clean: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        labels_max = self._check(model, x, y, grad_clean, noise)
        if self.every > 1:
            step, self._calls = self._calls, self._calls + 1
            if step % self.every:
                return x.new_zeros(())  # a skipped step: no pass at all
        batch = x.shape[0]
        x, y, grad_clean, noise = random_subset(self.fraction, x.detach(), y, grad_clean, noise)
        if grad_clean is None:
            grad_clean = input_gradient(model, x, y, self.loss_fn, labels_max=labels_max)
            batch, labels_max = x.shape[0], None
        scale = self.lam * self.every
        if self.mode == "linearity":
            return scale * linearity_penalty(model, x, y, grad_clean, self.eps, batch,
                                             self.loss_fn)
        return scale * (1.0 - self._mean_cos(model, x, y, grad_clean, noise, labels_max))

    def _mean_cos(self, model, x, y, grad_clean, noise, labels_max=None) -> torch.Tensor:
        """Mean cosine over the valid samples (gradalign_fast.alignment); 1 when there are
        none (the regulariser is then 0)."""
        if noise is None:
            noise = ops.random_delta(x, self.eps, clip_to_box=False)
        x_noisy = (x + noise.detach()).requires_grad_(True)
        fdb = fast_double_backward(self.low_memory) if (
            self.fast_layers and _fast_layers_pay(model_facts(model).batchnorms)) else None
        with regulariser_precision(self.precision, model, x.device.type):
            with _phase(PHASES[0]), fdb or contextlib.nullcontext(), \
                    double_backward_attention():
                loss = model_loss(model, x_noisy, y, self.loss_fn, "GradAlignLoss", labels_max)
                scale = inner_loss_scale(self.precision, x)  # B under fp16: see precision.py
                if scale != 1.0:
                    loss = loss * scale
            with _phase(PHASES[1]), fdb.input_grad_only() if fdb else \
                    contextlib.nullcontext(), _compile_errors_explained():
                (grad_noisy,) = torch.autograd.grad(loss, x_noisy, create_graph=True)
        # grad_noisy: [b, ...]; cos, norms: [b] (float32, or float64 for float64 gradients)
        with _phase(PHASES[2]):
            mean_cos, n_valid = mean_cosine(grad_clean.detach(), grad_noisy)
        if not self._probed:  # once: a clear error where torch.compile cannot double-backward
            _probe_double_backward(mean_cos, model)
            self._probed = True
        self.last_cos = torch.where(n_valid > 0, mean_cos.detach(), math.nan)
        self.last_valid = n_valid.detach()
        return mean_cos + (n_valid == 0)  # 1 (a zero regulariser) when no sample is valid
