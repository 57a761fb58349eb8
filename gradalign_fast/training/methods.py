"""Adversarial-training methods as one training step each, sharing `train_step`.

A method says which perturbation the model trains on (`perturb`) and which regulariser is
added to the loss (`regularizer`); `train_step` does the rest identically for all of them.
eps and step sizes are in input units ([0, 1] pixels).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .. import attacks, ops
from ..alignment import alignment_sum
from ..attention import double_backward_attention
from ..gradalign import GradAlignLoss
from .schedules import AdaptiveLambda


class Method:
    """Base: plain training on clean inputs."""

    name = "standard"
    double_backprop = False
    takes_lam = False  # a regulariser weight `lam` (the trainer passes config.lam)
    uses_gradalign_loss = False  # its regulariser is GradAlignLoss (precision policies apply)
    step_scale = 1.0  # the attack's step times this (a recipe's step warm-up, in [0, 1])

    def __init__(self, eps: float = 0.0, bounds=attacks.BOUNDS):
        self.bounds = attacks.check_bounds(self.name, bounds)  # the input box (lo, hi)
        self.eps = attacks.check_eps(self.name, eps, self.bounds)

    def set_eps(self, eps: float) -> None:
        """Changes eps in place (the trainer's eps warm-up); what derives from it (default
        step sizes) follows, the method's state is kept."""
        self.eps = attacks.check_eps(self.name, eps, self.bounds)

    def perturb(self, model, x, y):
        """-> (delta, grad at x or None). delta is detached."""
        return torch.zeros_like(x), None

    def regularizer(self, model, x, y, grad_clean):
        return None

    def set_step_scale(self, scale: float) -> None:
        """The attack's step scaled by `scale` in [0, 1], its radius eps unchanged (the
        authors' SVHN warm-up of FGSM's step)."""
        if not 0 <= scale <= 1:
            raise ValueError(f"{self.name}: step scale must be in [0, 1], got {scale}")
        self.step_scale = float(scale)

    def state_dict(self) -> dict:
        """What a resumed run needs besides eps and the options (checkpointed by the trainer)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def pop_log(self) -> dict:
        """Fields for the next metrics.jsonl row about the steps since the previous call (the
        trainer calls it once per row; those steps are then forgotten)."""
        return {}

    def __repr__(self):
        opts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


class FGSM(Method):
    """FGSM from zero, step alpha = eps (Goodfellow et al. 2015)."""

    name = "fgsm"

    def perturb(self, model, x, y):
        return attacks.fgsm(model, x, y, self.eps * self.step_scale, bounds=self.bounds)


class FGSMRS(Method):
    """FGSM from a uniform random start, alpha = 1.25 eps (Wong et al. 2020)."""

    name = "fgsm_rs"

    def __init__(self, eps, alpha=None, **kw):
        super().__init__(eps, **kw)
        self._alpha = None if alpha is None else float(alpha)

    @property
    def alpha(self) -> float:
        return 1.25 * self.eps if self._alpha is None else self._alpha

    def perturb(self, model, x, y):
        return attacks.fgsm_rs(model, x, y, self.eps, self.alpha * self.step_scale,
                               bounds=self.bounds), None


class NFGSM(Method):
    """N-FGSM (de Jorge et al. 2022): noise U(+-2 eps), alpha = eps, no eps-ball projection."""

    name = "nfgsm"

    def __init__(self, eps, alpha=None, noise_mult=2.0, **kw):
        super().__init__(eps, **kw)
        self._alpha = None if alpha is None else float(alpha)
        self.noise_mult = float(noise_mult)

    @property
    def alpha(self) -> float:
        return self.eps if self._alpha is None else self._alpha

    def perturb(self, model, x, y):
        return attacks.nfgsm(model, x, y, self.eps, self.alpha * self.step_scale,
                             self.noise_mult, bounds=self.bounds), None


class PGD(Method):
    """PGD-k adversarial training (Madry et al. 2018), alpha = 2.5 eps / k by default."""

    name = "pgd"

    def __init__(self, eps, steps=10, alpha=None, **kw):
        super().__init__(eps, **kw)
        self.steps = int(steps)
        self._alpha = None if alpha is None else float(alpha)

    @property
    def alpha(self) -> float:
        return 2.5 * self.eps / self.steps if self._alpha is None else self._alpha

    def perturb(self, model, x, y):
        return attacks.pgd(model, x, y, self.eps, self.alpha * self.step_scale, self.steps,
                           bounds=self.bounds), None


class GradAlign(FGSM):
    """FGSM + GradAlign (Andriushchenko & Flammarion 2020): the FGSM gradient is reused as the
    clean gradient of the regulariser. Extra keyword options go to GradAlignLoss."""

    name = "gradalign"
    double_backprop = True
    takes_lam = True
    uses_gradalign_loss = True

    def __init__(self, eps, lam, **kw):
        super().__init__(eps, kw.pop("bounds", attacks.BOUNDS))
        self.lam = float(lam)
        # The step's FGSM attack has checked this x for NaN/inf; the regulariser's own check
        # would repeat it (a second host sync per step on a GPU).
        kw.setdefault("check_finite", False)
        self._loss = GradAlignLoss(self.eps, self.lam, bounds=self.bounds, **kw)

    @property
    def last_cos(self):
        return self._loss.last_cos

    def set_eps(self, eps: float) -> None:
        """Changes eps in place (the trainer's eps warm-up), keeping the regulariser's state
        (its `every` call counter)."""
        super().set_eps(eps)
        self._loss.eps = self.eps

    def regularizer(self, model, x, y, grad_clean):
        return self._loss(model, x, y, grad_clean=grad_clean)

    def state_dict(self) -> dict:
        return dict(self._loss.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self._loss.load_state_dict(state)


def _per_sample_input_grad(model, x, y, create_graph):
    """Input gradient of the summed loss (so each row is that sample's own gradient)."""
    xin = x.detach().requires_grad_(True)
    with double_backward_attention(create_graph):
        loss = F.cross_entropy(model(xin), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xin, create_graph=create_graph)
    return g, loss


class CURE(FGSM):
    """FGSM + CURE (Moosavi-Dezfooli et al. 2019): lam * mean_i |grad l(x_i + h z_i) -
    grad l(x_i)|^2, z = sign(grad l(x)), h = eps by default; both gradients double-backpropagated."""

    name = "cure"
    double_backprop = True
    takes_lam = True

    def __init__(self, eps, lam, h=None, **kw):
        super().__init__(eps, **kw)
        self.lam = float(lam)
        self._h = None if h is None else float(h)

    @property
    def h(self) -> float:
        return self.eps if self._h is None else self._h

    def regularizer(self, model, x, y, grad_clean):
        z = torch.sign(grad_clean)
        g0, _ = _per_sample_input_grad(model, x, y, True)
        g1, _ = _per_sample_input_grad(model, x + self.h * z, y, True)
        return self.lam * (g1 - g0).flatten(1).pow(2).sum(1).mean()


class LLR(Method):
    """Local linearity regularisation (Qin et al. 2019) on clean training:
    lam * gamma + mu * |delta^T grad l(x)|, gamma = |l(x+delta) - l(x) - delta^T grad l(x)|,
    delta maximising gamma over the eps-ball by `steps` signed steps from a random start."""

    name = "llr"
    double_backprop = True
    takes_lam = True

    def __init__(self, eps, lam=4.0, mu=3.0, steps=2, **kw):
        super().__init__(eps, **kw)
        self.lam, self.mu, self.steps = float(lam), float(mu), int(steps)

    def _gamma(self, model, x, y, delta, loss0, g0):
        loss_d = F.cross_entropy(model(x + delta), y, reduction="none")
        lin = (delta * g0).flatten(1).sum(1)
        return (loss_d - loss0 - lin).abs(), lin

    def regularizer(self, model, x, y, grad_clean):
        xin = x.detach().requires_grad_(True)
        with double_backward_attention():  # g0 (in lin) is differentiated again
            loss0 = F.cross_entropy(model(xin), y, reduction="none")
        (g0,) = torch.autograd.grad(loss0.sum(), xin, create_graph=True)
        delta = ops.random_delta(x, self.eps, *self.bounds, True)
        for _ in range(self.steps):  # inner maximisation, no graph to the parameters
            d = delta.detach().requires_grad_(True)
            gamma, _ = self._gamma(model, x, y, d, loss0.detach(), g0.detach())
            (gd,) = torch.autograd.grad(gamma.sum(), d)
            delta = ops.attack_step(x, delta, gd, self.eps / 2, self.eps, *self.bounds, True)
        gamma, lin = self._gamma(model, x, y, delta, loss0, g0)
        return self.lam * gamma.mean() + self.mu * lin.abs().mean()


def _check_number(owner: str, name: str, v, lo: float, hi: float = math.inf,
                  lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
    """ValueError naming the option unless v is a number (an int if `integer`) in the range
    [lo, hi] (ends excluded where *_open)."""
    kind = int if integer else (int, float)
    ok = isinstance(v, kind) and not isinstance(v, bool) and not math.isnan(v)
    if ok and (v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)):
        ok = False
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{owner}: `{name}` must be {'an integer' if integer else 'a number'} "
                         f"in {rng}, got {v!r}")


def elle_error(model, x, y, eps: float) -> torch.Tensor:
    """ELLE's local-linearity error at x (Rocamora et al., CVPR 2024; LIONS-EPFL/ELLE,
    core/utils/train.py, the CIFAR code), differentiable in the parameters:

        E = (1/B) sum_i (l_i(x_c) - [(1 - a_i) l_i(x_a) + a_i l_i(x_b)])^2,

    x_a, x_b ~ U(eps-ball around x_i) elementwise, NOT clipped to the input box (the authors'
    CIFAR/SVHN code does not clip; their ImageNet code does), a_i ~ U[0, 1) per sample,
    x_c = (1 - a) x_a + a x_b, l_i the per-sample cross-entropy; one forward over the 3B points
    (train-mode BatchNorm normalises over all of them, as in the authors' code). The random
    draws are theirs, in their order: the [2B, ...] noise, then a.
    """
    b = x.shape[0]
    x = x.detach()
    x_ab = x.repeat(2, *(1,) * (x.dim() - 1))  # [2B, ...]: rows :B become x_a, B: x_b
    x_ab = x_ab + ops.random_delta(x_ab, eps, clip_to_box=False)
    a = torch.rand((b,) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)  # [B, 1, ...]
    x_c = (1 - a) * x_ab[:b] + a * x_ab[b:]
    losses = F.cross_entropy(model(torch.cat([x_ab, x_c])), y.repeat(3), reduction="none")
    l_a, l_b, l_c = losses.view(3, b)  # each [B]
    a = a.flatten().to(losses.dtype)
    return (l_c - ((1 - a) * l_a + a * l_b)).pow(2).mean()


class ELLE(FGSM):
    """FGSM + ELLE (Rocamora et al., CVPR 2024): lam * E_lin (see `elle_error`), added to the
    FGSM loss (zero init, step eps, as in the authors' ELLE scripts).

    lam: the authors' CIFAR-10 scripts use 1000 at eps <= 8/255, 5000 at 10-20/255 and 10000
    at 22-26/255. No MNIST value is published. The default, 1000, is a guess for the MNIST
    study to tune: in a 3-epoch sanity run on the packaged MNIST subset (eps 0.3 reached after
    1.5 epochs) 10000, their value at their largest eps, diverged (NaN loss at iteration 120)
    while 1000 trained (and kept the alignment at ~0.91). Departure: our FGSM keeps x + delta
    in [0, 1] (the authors' CIFAR code does not clip).
    """

    name = "elle"
    takes_lam = True
    default_lam = 1000.0

    def __init__(self, eps, lam=None, **kw):
        super().__init__(eps, **kw)
        lam = self.default_lam if lam is None else lam
        _check_number(self.name, "lam", lam, 0.0, hi_open=True)
        self.lam = float(lam)
        self._err_sum, self._err_steps = 0.0, 0  # since the last pop_log (a tensor: no sync)

    def _log_error(self, err: torch.Tensor) -> None:
        self._err_sum = self._err_sum + err.detach()
        self._err_steps += 1

    def regularizer(self, model, x, y, grad_clean):
        err = elle_error(model, x, y, self.eps)
        self._log_error(err)
        return self.lam * err

    def pop_log(self) -> dict:
        """lin_err: mean E_lin over the steps since the last call."""
        row = {"lin_err": float(self._err_sum) / self._err_steps} if self._err_steps else {}
        self._err_sum, self._err_steps = 0.0, 0
        return row


class ELLEA(ELLE):
    """FGSM + ELLE-A (Rocamora et al. 2024): ELLE with the adaptive lambda of the authors'
    'onoff' schedule (`AdaptiveLambda`, k = 2, decay 0.99): lambda starts at 0; after each
    step, lambda = lam (lambda_max) if this step's E_lin exceeds mean + k std of all earlier
    steps' E_lin, else lambda * decay; the new lambda weights the NEXT step's error (the
    authors update it after backward). E_lin is computed at every step (the detector needs
    it). lam (lambda_max): the authors use 4000 at every CIFAR-10 eps (2-26/255); on MNIST
    that made the sanity run above collapse to a constant predictor once eps reached 0.3, so
    the default is ELLE's 1000 (which trained there), a guess to tune. Departures: while
    lambda is exactly 0 (before the first trigger) the error is computed without a graph (the
    same update, no backward of 0 * E_lin); the running mean and std are Welford moments (O(1)
    state, numpy's values up to rounding). One host sync per step (the error's value), as in
    the authors' code. Under an eps warm-up the error grows with eps, so it keeps exceeding the
    mean of the (smaller) earlier errors: lambda stays near lambda_max, as in ELLE.
    """

    name = "elle_a"

    def __init__(self, eps, lam=None, k=2.0, decay=0.99, **kw):
        super().__init__(eps, lam, **kw)
        _check_number(self.name, "k", k, 0.0)
        _check_number(self.name, "decay", decay, 0.0, 1.0)
        self.k, self.decay = float(k), float(decay)
        self._lam = AdaptiveLambda(self.lam, self.k, self.decay, high=True)
        self._on_steps = 0  # steps with lambda > 0 since the last pop_log

    @property
    def lam_now(self) -> float:
        return self._lam.lam

    def regularizer(self, model, x, y, grad_clean):
        lam = self._lam.lam
        with contextlib.nullcontext() if lam > 0 else torch.no_grad():
            err = elle_error(model, x, y, self.eps)
        self._log_error(err)
        self._on_steps += lam > 0
        self._lam.update(err.item())  # after the step's loss is formed: applies next step
        return lam * err

    def state_dict(self) -> dict:
        return {"elle_a": self._lam.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._lam.load_state_dict(state["elle_a"])

    def pop_log(self) -> dict:
        """lin_err (mean), reg_share (share of steps with lambda > 0) since the last call, and
        lam: the lambda of the next step."""
        steps = self._err_steps
        row = {**super().pop_log(), "lam": self._lam.lam}
        if steps:
            row["reg_share"] = self._on_steps / steps
        self._on_steps = 0
        return row


class GradAlignAdaptive(GradAlign):
    """FGSM + GradAlign switched on by a cheap alignment probe (ours, in the spirit of ELLE-A).

    Every `period` steps the probe measures mean_i cos(grad_x l(x_i), grad_x l(x_i + eta_i))
    on the first `probe_size` samples of the batch (batches are shuffled), eta ~
    U([-eps, eps]^d) as in GradAlign: grad_x l(x) is the FGSM gradient, reused; grad_x l(x+eta)
    is one first-order forward/backward of the sub-batch (no double backprop). The probe feeds
    an `AdaptiveLambda` (high=False): rule "std" fires when the alignment is below mean - k std
    of all earlier probes, rule "threshold" when it is below `threshold`; a fire sets
    lambda = lam, otherwise lambda *= decay (decay 0: off at once), 0 below off_below * lam.
    The decision applies to the probing step itself (the probe runs before the regulariser) and
    holds until the next probe. The exact GradAlign regulariser (GradAlignLoss, options in kw)
    is computed only on steps with lambda > 0. One host sync per probe (the branch).
    """

    name = "gradalign_adaptive"
    RULES = ("std", "threshold")

    def __init__(self, eps, lam, probe_size=16, period=1, rule="std", k=2.0, threshold=None,
                 decay=0.0, off_below=0.01, **kw):
        if "every" in kw:
            raise ValueError(f"{self.name}: `every` is not an option here (the probe decides "
                             f"which steps are regularised; `period` sets how often it runs)")
        super().__init__(eps, lam, **kw)
        _check_number(self.name, "probe_size", probe_size, 1, integer=True)
        _check_number(self.name, "period", period, 1, integer=True)
        if rule not in self.RULES:
            raise ValueError(f"{self.name}: `rule` must be one of {self.RULES}, got {rule!r}")
        if rule == "threshold":
            _check_number(self.name, "threshold", threshold, -1.0, 1.0)
        elif threshold is not None:
            raise ValueError(f"{self.name}: `threshold` is for rule='threshold' (rule "
                             f"{rule!r} uses k)")
        _check_number(self.name, "k", k, 0.0)
        _check_number(self.name, "decay", decay, 0.0, 1.0, hi_open=True)
        _check_number(self.name, "off_below", off_below, 0.0, 1.0)
        self.probe_size, self.period, self.rule = probe_size, period, rule
        self.k, self.threshold = float(k), None if threshold is None else float(threshold)
        self.decay, self.off_below = float(decay), float(off_below)
        self._lam = AdaptiveLambda(self.lam, self.k, self.decay, high=False,
                                   threshold=self.threshold, off_below=self.off_below)
        self._steps = 0  # steps so far (the probe runs when steps % period == 0)
        self._window = [0, 0, 0.0, 0]  # since pop_log: steps, regularised, probe sum, probes

    @property
    def lam_now(self) -> float:
        return self._lam.lam

    def probe(self, model, x, y, grad_clean) -> torch.Tensor:
        """The gradient alignment (gradalign_fast.alignment) of the first probe_size samples,
        0-dim; 1 when none is valid (nothing to align: the probe does not fire);
        grad_clean: [B, ...], the input gradient at x."""
        m = min(self.probe_size, x.shape[0])
        total, n_valid = alignment_sum(model, x[:m].detach(), y[:m], self.eps,
                                       grad_clean=grad_clean[:m])
        return torch.where(n_valid > 0, total / n_valid.clamp(min=1), 1.0)

    def regularizer(self, model, x, y, grad_clean):
        w = self._window
        if self._steps % self.period == 0:
            p = self.probe(model, x, y, grad_clean).item()
            self._lam.update(p)
            w[2] += p
            w[3] += 1
        self._steps += 1
        lam = self._lam.lam
        w[0] += 1
        if lam == 0:
            return None
        w[1] += 1
        self._loss.lam = lam
        return super().regularizer(model, x, y, grad_clean)

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "adaptive": {"steps": self._steps, **self._lam.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        own = state.pop("adaptive")
        super().load_state_dict(state)
        self._steps = int(own["steps"])
        self._lam.load_state_dict(own)

    def pop_log(self) -> dict:
        """reg_share: share of the steps since the last call that computed the regulariser;
        probe_cos: their probes' mean; lam: lambda now."""
        steps, reg, probe_sum, probes = self._window
        row = {"lam": self._lam.lam}
        if steps:
            row["reg_share"] = reg / steps
        if probes:
            row["probe_cos"] = probe_sum / probes
        self._window = [0, 0, 0.0, 0]
        return row


METHODS = {m.name: m for m in (Method, FGSM, FGSMRS, NFGSM, PGD, GradAlign, CURE, LLR, ELLE,
                               ELLEA, GradAlignAdaptive)}


def make_method(name: str, eps: float, **kw) -> Method:
    """METHODS[name](eps, **kw), with a clear error for an unknown name."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name](eps, **kw)
