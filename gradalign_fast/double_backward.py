"""Cheaper double backward of Conv2d, train-mode BatchNorm and ReLU, for GradAlign's forward
at x + eta.

GradAlign differentiates the input gradient again (create_graph=True), so every layer's
backward is itself differentiated. PyTorch's generic second derivatives waste work there:

* BatchNorm (pytorch/pytorch#3076): `batchnorm_double_backward` builds ~30 full-size
  temporaries per layer. Here the backward of BatchNorm is an autograd.Function whose own
  backward is the analytic second derivative (two native BatchNorm backward calls, one
  reduction, and four elementwise passes; derivation in _BatchNormBackward.backward).
* ReLU: the derivative of threshold_backward(g, out) with respect to `out` is a zero tensor
  that PyTorch materialises and pushes back through the forward graph. Here `out` is passed
  detached, so the double backward is one threshold_backward and nothing else.
* Conv2d: the weight term of the double backward is computed by PyTorch from batch/channel
  transposed copies; here it is one native weight-gradient call. And the pass that takes only
  the input gradient (autograd.grad) computes no weight gradient (see input_grad_only()).

Memory (low_memory=True, the default): a ReLU that follows a train-mode BatchNorm keeps no
tensor, and neither does the convolution that reads its output. That output is recomputed
from the BatchNorm's input (kept anyway) in one elementwise pass where a backward needs it
(_AffineReLU), bitwise equal on CPU to the forward's. In a pre-activation ResNet this halves
the activations the double backward holds, at no measurable time cost.

`fast_double_backward()` is a TorchFunctionMode that routes F.conv2d, F.batch_norm (train mode,
affine) and F.relu (not in place) to these Functions, under autocast too (conv2d in the autocast
dtype as PyTorch's policy; BatchNorm with float32 statistics); everything else runs as usual.
Values and all derivatives equal PyTorch's (gradcheck/gradgradcheck in float64, and the
GradAlign reference, in tests/test_gradalign.py).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from . import ops


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics [C] -> x's dtype, broadcastable over x: [1, C, 1, ...]."""
    return t.to(x.dtype).view((1, -1) + (1,) * (x.dim() - 2))


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


class _BatchNormBackward(torch.autograd.Function):
    """(g, x, gamma; mean, invstd) -> (dx, dgamma, dbeta) of train-mode BatchNorm.

    Per channel, with N elements, s = invstd, xh = (x - mean) * s, gbar = mean(g),
    c = mean(g * xh):
        dx = gamma * s * (g - gbar - xh * c),  dgamma = N * c,  dbeta = N * gbar.
    mean and invstd are functions of x; their dependence on x is in the backward below, so they
    are passed in as constants.
    """

    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, eps):
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.save_for_backward(g, x, weight, mean, invstd, dw, db)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # unused outputs (dgamma, dbeta) stay None: no zeros
        return dx, dw, db

    @staticmethod
    @once_differentiable
    def backward(ctx, v, a, b):
        """Upstream v (for dx, shaped like x), a (for dgamma, [C]), b (for dbeta, [C]).

        With R = <v, dx> + <a, dgamma> + <b, dbeta>, vbar = mean(v), w = mean(v * xh),
        m = mean(v * g):
          dR/dg     = gamma*s*(v - vbar - xh*w) + a*xh + b     (BatchNorm backward of v, + ...)
          dR/dgamma = N * s * (m - vbar*gbar - w*c)
          dR/dx     = s*(G - mean(G) - xh*mean(G*xh)) + K * ds/dx,  ds/dx = -s^2*xh/N,
                      G = dR/dxh at fixed s = -gamma*s*(c*v + w*g) + a*g,
                      K = dR/ds at fixed xh = N*gamma*(m - vbar*gbar - w*c)
        G is alpha1*v + alpha2*g per channel, so every term is a per-channel affine
        combination of v, g and x: one native BatchNorm backward, one reduction and a few
        elementwise passes.
        """
        g, x, weight, mean, invstd, dw, db = ctx.saved_tensors
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        n = x.numel() // x.shape[1]
        dims = _reduce_dims(x)
        if v is None:
            v = torch.zeros_like(x)
        # gg_v = gamma*s*(v - vbar - xh*w); its dgamma/dbeta outputs are sum(v*xh), sum(v).
        gg_v, sum_vxh, sum_v = torch.ops.aten.native_batch_norm_backward(
            v, x, weight, None, None, mean, invstd, True, ctx.eps, [need_g, True, True])
        s = invstd
        vbar, w = sum_v / n, sum_vxh / n
        gbar, c = db / n, dw / n
        m = torch.sum(v * g, dims, dtype=s.dtype) / n  # bf16 inputs: float32 sums
        k = m - vbar * gbar - w * c  # [C]; dR/ds = N*gamma*k
        grad_g = grad_x = grad_w = None
        if need_g:
            grad_g = gg_v
            if a is not None or b is not None:
                a0 = torch.zeros_like(s) if a is None else a
                b0 = torch.zeros_like(s) if b is None else b
                # + a*xh + b = a*s*x + (b - a*s*mean)
                grad_g = gg_v + _channel_view(a0 * s, x) * x + _channel_view(b0 - a0 * s * mean, x)
        if need_x:
            a0 = torch.zeros_like(s) if a is None else a
            alpha1 = -weight * s * c
            alpha2 = a0 - weight * s * w
            mean_g = alpha1 * vbar + alpha2 * gbar          # mean(G)
            mean_gxh = alpha1 * w + alpha2 * c               # mean(G*xh)
            coef_xh = -s * mean_gxh - s * s * weight * k    # coefficient of xh in dR/dx
            # dR/dx = s*alpha1*v + s*alpha2*g + coef_xh*s*(x - mean) - s*mean_g
            grad_x = torch.mul(v, _channel_view(s * alpha1, x))
            grad_x.addcmul_(g, _channel_view(s * alpha2, x))
            grad_x.addcmul_(x, _channel_view(coef_xh * s, x))
            grad_x.add_(_channel_view(-coef_xh * s * mean - s * mean_g, x))
        if need_w:
            grad_w = n * s * k
        return grad_g, grad_x, grad_w, None, None, None


class _BatchNormTrain(torch.autograd.Function):
    """Train-mode BatchNorm (batch statistics; running stats updated in place, as PyTorch)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, mode):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                  True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        if mode.low_memory and x.dtype in (torch.float32, torch.float64):
            _mark(y, "_gaf_bn", _AffineReLU(x, weight, bias, mean, invstd))
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = _BatchNormBackward.apply(g, x, weight, mean, invstd, ctx.eps)
        return dx, dw, db, None, None, None, None, None


def _mark(t: torch.Tensor, name: str, recipe) -> None:
    """Tags t with the recipe that recomputes it, valid while t is not modified in place."""
    setattr(t, name, (recipe, t._version))


def _recipe(t: torch.Tensor, name: str):
    """The recipe t was tagged with, or None (untagged, or modified in place since: an
    in-place op after BatchNorm or ReLU, then the plain Functions are used)."""
    tag = getattr(t, name, None)
    return tag[0] if tag is not None and tag[1] == t._version else None


class _AffineReLU:
    """r = relu(x * a + b) with per-channel a = gamma * invstd, b = beta - mean * a: the output
    of a ReLU after a train-mode BatchNorm, not kept (low_memory) but recomputed from the
    BatchNorm's input, which the BatchNorm keeps anyway (equal to the forward's value up to
    float rounding; bitwise on CPU).

    x: [B, C, ...] (held detached: no copy); a, b: [C] constants (the parameters do not change
    between the forward and the backward).

    The ReLU's backward needs only the mask r > 0: the op relu_affine_backward applies it from
    x in one pass (the same memory traffic as threshold_backward(g, r)), so that costs nothing
    extra. Only a convolution's weight gradient needs r itself: `output()` recomputes it and
    keeps it for the ReLU backward that follows in the same first-order pass (and for a second
    convolution reading the same r, e.g. a shortcut), which releases it."""

    __slots__ = ("x", "a", "b", "_kept")

    def __init__(self, x, weight, bias, mean, invstd):
        a = (weight.detach() * invstd).to(x.dtype)
        self.x = x.detach()
        self.a = a
        self.b = (bias.detach() - mean * a).to(x.dtype)
        self._kept = None

    def output(self) -> torch.Tensor:
        if self._kept is None:
            self._kept = torch.addcmul(_channel_view(self.b, self.x), self.x,
                                       _channel_view(self.a, self.x)).relu_()
        return self._kept

    def relu_backward(self, g: torch.Tensor) -> torch.Tensor:
        """threshold_backward(g, r, 0) (releases a kept r)."""
        out, self._kept = self._kept, None
        if out is not None:
            return torch.ops.aten.threshold_backward(g, out, 0)
        return ops.relu_affine_backward(g, self.x, self.a, self.b)


class _ReLUBackward(torch.autograd.Function):
    """(g, recipe) -> threshold_backward(g, relu output): the backward of a ReLU whose output
    is recomputed by an _AffineReLU recipe. Linear in g; its backward is itself."""

    @staticmethod
    def forward(ctx, g, recipe):
        ctx.recipe = recipe
        return recipe.relu_backward(g)

    @staticmethod
    @once_differentiable
    def backward(ctx, v):
        return ctx.recipe.relu_backward(v), None


class _ReLUAfterBatchNorm(torch.autograd.Function):
    """ReLU of a train-mode BatchNorm's output that keeps no tensor: its output is recomputed
    (_AffineReLU) by its backward and by the convolution that reads it."""

    @staticmethod
    def forward(ctx, x, recipe):
        ctx.recipe = recipe
        out = torch.relu(x)
        _mark(out, "_gaf_relu", recipe)
        return out

    @staticmethod
    def backward(ctx, g):
        return _ReLUBackward.apply(g, ctx.recipe), None


class _ReLU(torch.autograd.Function):
    """ReLU whose backward threshold_backward(g, out) sees `out` detached: its double backward
    is threshold_backward(v, out) and no zero tensor for `out` is made."""

    @staticmethod
    def forward(ctx, x):
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, out.detach(), 0)


class _ConvBackwardInput(torch.autograd.Function):
    """(g, weight) -> input gradient of a convolution, linear in both.

    PyTorch differentiates this through `_convolution_double_backward`, which takes the weight
    term as a convolution of batch/channel-transposed tensors (two copies per layer). Here:
    d<v, dx>/dg = conv(v, weight) and d<v, dx>/dweight = the weight gradient of conv(v) at g,
    one native call each, no copies.
    """

    @staticmethod
    def forward(ctx, g, weight, x, args):
        """x: the convolution's input, read for its size only (may be _size_only(...))."""
        ctx.save_for_backward(g, weight)
        ctx.args = args  # (stride, padding, dilation, groups)
        return _conv_backward(g, x, weight, args, (True, False, False))[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, v):
        g, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.args
        grad_g = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_g = torch.convolution(v, weight, None, stride, padding, dilation, False,
                                       [0] * len(stride), groups)
        if ctx.needs_input_grad[1]:
            grad_w = _conv_backward(g, v, weight, ctx.args, (False, True, False))[1]
        return grad_g, grad_w, None, None


def _size_only(x_shape, like: torch.Tensor) -> torch.Tensor:
    """A stand-in of the convolution input for convolution_backward calls that read only its
    size (input gradient only), as torch.nn.grad.conv2d_input does: no memory."""
    return like.new_empty(1).expand(x_shape)


def _conv_backward(g, x, weight, args, mask):
    """(grad_x, grad_weight, grad_bias) of a convolution, each computed only where `mask`."""
    stride, padding, dilation, groups = args
    return torch.ops.aten.convolution_backward(g, x, weight, [weight.shape[0]], stride, padding,
                                               dilation, False, [0] * len(stride), groups,
                                               list(mask))


class _Conv2d(torch.autograd.Function):
    """conv2d whose input gradient is a _ConvBackwardInput (cheap to differentiate again) and
    whose weight and bias gradients are skipped while `mode.skip_weight_grads` is set (the pass
    that takes only the input gradient: autograd.grad would discard them).

    recipe: an _AffineReLU when the input is a ReLU-after-BatchNorm output (low_memory): the
    input is then not kept but recomputed where the weight gradient needs it."""

    @staticmethod
    def forward(ctx, x, weight, bias, args, mode, recipe):
        stride, padding, dilation, groups = args
        ctx.save_for_backward(weight) if recipe is not None else ctx.save_for_backward(x, weight)
        ctx.args, ctx.mode, ctx.recipe, ctx.x_shape = args, mode, recipe, x.shape
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, [0, 0],
                                 groups)

    @staticmethod
    def backward(ctx, g):
        recipe = ctx.recipe
        x, weight = (None, *ctx.saved_tensors) if recipe is not None else ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.mode.skip_weight_grads:
            need_w = need_b = False
        if recipe is not None:
            x = recipe.output() if need_w else _size_only(ctx.x_shape, g)
        if not torch.is_grad_enabled():  # a first-order pass: one native call does it all
            return (*_conv_backward(g, x, weight, ctx.args, (need_x, need_w, need_b)), None,
                    None, None)
        if recipe is not None and need_w:
            raise RuntimeError("fast_double_backward(low_memory=True) supports create_graph "
                               "passes that take input gradients only (input_grad_only())")
        grad_x = _ConvBackwardInput.apply(g, weight, x, ctx.args) if need_x else None
        # Differentiable native call: recorded only when this pass has create_graph=True.
        grad_w = _conv_backward(g, x, weight, ctx.args, (False, True, False))[1] if need_w else None
        grad_b = g.sum((0, 2, 3)) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _relu(input, inplace=False):
    recipe = _recipe(input, "_gaf_bn")
    return _ReLU.apply(input) if recipe is None else _ReLUAfterBatchNorm.apply(input, recipe)


def _fast_path_ok(func, args, kwargs) -> bool:
    if func is F.relu:
        return not kwargs.get("inplace", len(args) > 1 and args[1])
    if func is F.conv2d:
        padding = args[4] if len(args) > 4 else kwargs.get("padding", 0)
        return args[0].dim() == 4 and not isinstance(padding, str)
    bound = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training"),
                     args), **kwargs)
    return (bool(bound.get("training", False)) and bound.get("weight") is not None
            and bound.get("bias") is not None and bound["input"].dim() >= 2)


class fast_double_backward(TorchFunctionMode):
    """Within this context, F.batch_norm (train mode, affine), F.relu (not in place) and
    F.conv2d use the Functions above; everything else runs as usual.

    Use it around the forward whose input gradient is then taken with create_graph=True, and
    take that gradient inside `input_grad_only()` so that no weight gradient is computed
    (with low_memory=True, a create_graph pass that asks for a convolution's weight gradient
    raises: its recomputed input would carry no graph)::

        fdb = fast_double_backward()
        with fdb:
            loss = loss_fn(model(x), y)
        with fdb.input_grad_only():
            (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    """

    def __init__(self, low_memory: bool = True):
        super().__init__()
        self.skip_weight_grads = False
        self.low_memory = bool(low_memory)
        self._routes = {F.batch_norm: self._batch_norm, F.relu: _relu, torch.relu: _relu,
                        F.conv2d: self._conv2d}

    @contextlib.contextmanager
    def input_grad_only(self):
        self.skip_weight_grads = True
        try:
            yield
        finally:
            self.skip_weight_grads = False

    def _batch_norm(self, input, running_mean, running_var, weight=None, bias=None,
                    training=False, momentum=0.1, eps=1e-5):
        return _BatchNormTrain.apply(input, weight, bias, running_mean, running_var, momentum,
                                     eps, self)

    def _conv2d(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        args = (_pair(stride), _pair(padding), _pair(dilation), groups)
        dev = input.device.type
        if not torch.is_autocast_enabled(dev):
            return _Conv2d.apply(input, weight, bias, args, self, _recipe(input, "_gaf_relu"))
        # autocast's policy for conv2d, with differentiable casts outside the Function
        dt = torch.get_autocast_dtype(dev)
        input, weight = input.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
        with torch.autocast(dev, enabled=False):
            return _Conv2d.apply(input, weight, bias, args, self, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = self._routes.get(func)
        if route is not None and _fast_path_ok(func, args, kwargs):
            return route(*args, **kwargs)
        return func(*args, **kwargs)
