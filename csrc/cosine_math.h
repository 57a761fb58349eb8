// Arithmetic of gradalign_fast::cosine_backward shared by the CPU and CUDA kernels, so both
// compute bit-for-bit the same per-sample scalars and element formula (contract:
// csrc/gradalign_fast.cpp).
#pragma once
#include <c10/macros/Macros.h>

#include <limits>

namespace gradalign_fast {

// The per-sample scalars of d cos_i / d a_i, computed once per sample i:
//   g_over_a = grad_cos[i] / |a_i|, inv_b = 1 / |b_i|, cos_over_a = cos[i] / |a_i|,
// all three 0 for a sample with a zero norm (it is left out: its gradient is 0).
// Each scalar divides by one norm only: 1 / (|a| |b|) and cos / |a|^2 underflow their
// denominators (and overflow) in float32 once the norms fall below ~1e-19, a size the input
// gradients of a confident model reach (tests/test_cosine_op.py has such a batch). A norm below the smallest normal number of math_t (a denormal
// norm, ~1e-38 in float32) counts as zero here: its reciprocal would overflow.
// vec_t: dtype of the [B] inputs (float, or double for double a); math_t: the element math
// type (at::opmath_type of a's dtype: float for half/bfloat16/float, double for double).
template <typename math_t>
struct CosineBackwardCoeffs {
  math_t g_over_a, inv_b, cos_over_a;

  template <typename vec_t>
  static C10_HOST_DEVICE CosineBackwardCoeffs of_sample(vec_t grad_cos, vec_t cos, vec_t norm_a,
                                                        vec_t norm_b) {
    const math_t na = static_cast<math_t>(norm_a), nb = static_cast<math_t>(norm_b);
    const math_t tiny = std::numeric_limits<math_t>::min();
    if (!(na >= tiny && nb >= tiny)) return {math_t(0), math_t(0), math_t(0)};
    return {static_cast<math_t>(grad_cos) / na, math_t(1) / nb, static_cast<math_t>(cos) / na};
  }

  // grad_a for one element (a, b) of the sample:
  //   g * (b / (|a| |b|) - cos * a / |a|^2) = (g / |a|) * (b / |b| - (cos / |a|) * a).
  C10_HOST_DEVICE math_t grad(math_t a, math_t b) const {
    return g_over_a * (b * inv_b - a * cos_over_a);
  }
};

}  // namespace gradalign_fast
