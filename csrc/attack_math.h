// Element formulas of the attack steps shared by the CPU and CUDA kernels, so both compute
// bit-for-bit the same arithmetic as the reference (gradalign_fast/ops/reference.py) in the
// op's math type.
#pragma once
#include <c10/macros/Macros.h>

namespace gradalign_fast {

// The formulas are branch-free: the sign of a random gradient is unpredictable, so a branch
// per element on it mispredicts about half the time; comparisons turned into values and
// one-sided selects compile to setcc/max/min instructions instead.

// torch.sign: 1, -1, or +0 for +-0 and NaN (a NaN gradient element gives no step, as in
// the reference; both comparisons are false for NaN).
template <typename T>
C10_HOST_DEVICE inline T sign_of(T g) {
  return T(g > T(0)) - T(g < T(0));
}

// torch.clamp for lo <= hi (the ops check it): a NaN input stays NaN (both comparisons are
// false).
template <typename T>
C10_HOST_DEVICE inline T clamp_nan(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// delta after the input box: clamp(x + delta, lo, hi) - x.
template <typename T>
C10_HOST_DEVICE inline T clip_delta_to_box(T x, T delta, T lo, T hi) {
  return clamp_nan(x + delta, lo, hi) - x;
}

// One signed-gradient step; see the attack_step schema in csrc/gradalign_fast.cpp.
template <typename T>
C10_HOST_DEVICE inline T attack_step_value(T x, T delta, T grad, T alpha, T eps, T lo, T hi,
                                           bool project) {
  T d = delta + alpha * sign_of(grad);
  if (project) d = clamp_nan(d, -eps, eps);
  return clip_delta_to_box(x, d, lo, hi);
}

}  // namespace gradalign_fast
