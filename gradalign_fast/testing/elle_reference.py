"""The ELLE authors' regulariser and 'onoff' lambda schedule, transcribed literally: the tests'
oracle for methods.ELLE, methods.ELLEA and AdaptiveLambda (LIONS-EPFL/ELLE @ 0f16c0e,
core/utils/train.py: Trainer.loss, branch reg == 'ELLE', and Trainer.train; train.py for the
schedule's set-up). Run it in float64 for comparisons."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .authors_reference import fgsm


def elle_lin_err(model, x, y, eps):
    """MSE between l(x_c) and (1 - alpha) l(x_a) + alpha l(x_b), per-sample CE, one forward
    over [x_a; x_b; x_c]; x_a, x_b = x + eps * (2 U[0, 1) - 1), not clipped."""
    bs = x.shape[0]
    ones = [1] * (x.dim() - 1)
    x_2 = x.repeat([2] + ones)
    x_2 = x_2 + eps * (2 * torch.rand(x_2.shape, dtype=x.dtype, device=x.device) - 1)
    alpha = torch.rand([bs] + ones, dtype=x.dtype, device=x.device)
    x_middle = (1 - alpha) * x_2[:bs] + alpha * x_2[bs:]
    alpha = alpha.squeeze()
    x_adv = torch.cat((x_2, x_middle), dim=0)
    y_adv = torch.cat((y, y, y), dim=0)
    losses = F.cross_entropy(model(x_adv), y_adv, reduction="none")
    mse = torch.nn.MSELoss()
    return mse(losses[2 * bs:], (1 - alpha) * losses[:bs] + alpha * losses[bs:2 * bs])


def elle_loss(model, x, y, eps, lin_reg):
    """(training loss, lin_err): CE at the FGSM point (zero init, step eps; our FGSM clips to
    [0, 1], the authors' does not) + lin_reg * lin_err, as in Trainer.loss."""
    delta, _ = fgsm(model, x, y, eps)
    lin_err = elle_lin_err(model, x, y, eps)
    return F.cross_entropy(model(x + delta), y) + lin_reg * lin_err, lin_err


class OnOffSchedule:
    """ELLE-A's lambda: lin_reg starts at 0 (lambda_aux keeps lambda_max); after each step's
    backward, lin_reg = lambda_aux if len(history) > 2 and this step's lin_err exceeds
    np.mean(history) + sensitivity * np.std(history), else lin_reg * decay_rate; then the
    value is appended to the (never reset) history."""

    def __init__(self, lin_reg, decay_rate=0.99, sensitivity=2):
        self.elle_values = []
        self.lambda_aux = lin_reg
        self.lin_reg = 0
        self.decay_rate, self.sensitivity = decay_rate, sensitivity

    def step(self, lin_err_value):
        if (len(self.elle_values) > 2 and lin_err_value > np.mean(self.elle_values)
                + self.sensitivity * np.std(self.elle_values)):
            self.lin_reg = self.lambda_aux
        else:
            self.lin_reg *= self.decay_rate
        self.elle_values.append(lin_err_value)
