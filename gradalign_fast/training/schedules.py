"""Schedules of a regulariser's weight driven by a signal: the running statistics of the signal
and the adaptive lambda of ELLE-A (and of adaptive GradAlign's probe)."""
from __future__ import annotations

import math


class RunningMoments:
    """Mean and population std (ddof=0, numpy's default) of every value added so far, in O(1)
    state: Welford's update (a plain sum / sum of squares cancels when std << mean)."""

    def __init__(self):
        self.n, self.mean, self._m2 = 0, 0.0, 0.0

    def add(self, v: float) -> None:
        self.n += 1
        d = v - self.mean
        self.mean += d / self.n
        self._m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.n) if self.n else 0.0

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self._m2}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.mean, self._m2 = int(state["n"]), float(state["mean"]), float(state["m2"])


class AdaptiveLambda:
    """lambda switched on by a risk signal s_t, ELLE-A's schedule (Rocamora et al. 2024).

    update(s_t) fires when s_t is beyond the mean + k std of all EARLIER signals (the whole
    run, as in the authors' code; needs more than 2 of them): above it for `high` (ELLE-A: a
    large linearity error), below mean - k std otherwise (a low gradient alignment); or, with
    `threshold` given, beyond that absolute value. A fire sets lambda = lam_max, any other
    update multiplies it by `decay`, and a lambda below off_below * lam_max becomes 0. lambda
    starts at 0. Plain Python floats: exact float64 arithmetic, checkpointed as they are.
    """

    def __init__(self, lam_max: float, k: float = 2.0, decay: float = 0.99, high: bool = True,
                 threshold: float | None = None, off_below: float = 0.0):
        self.lam_max, self.k, self.decay, self.high = lam_max, k, decay, high
        self.threshold, self.off_below = threshold, off_below
        self.lam = 0.0
        self.stats = RunningMoments()

    def update(self, s: float) -> bool:
        """Applies signal s (then adds it to the history); returns whether it fired."""
        st = self.stats
        if self.threshold is not None:
            fire = s > self.threshold if self.high else s < self.threshold
        elif self.high:
            fire = st.n > 2 and s > st.mean + self.k * st.std
        else:
            fire = st.n > 2 and s < st.mean - self.k * st.std
        if fire:
            self.lam = self.lam_max
        else:
            self.lam *= self.decay
            if self.lam < self.off_below * self.lam_max:
                self.lam = 0.0
        st.add(s)
        return fire

    def state_dict(self) -> dict:
        return {"lam": self.lam, **self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.lam = float(state["lam"])
        self.stats.load_state_dict(state)
