// Arithmetic of gradalign_fast::cosine_backward shared by the CPU and CUDA kernels, so both
// compute bit-for-bit the same per-sample scalars and element formula (contract:
// csrc/gradalign_fast.cpp).
#pragma once
#include <c10/macros/Macros.h>

namespace gradalign_fast {

// The per-sample scalars of d cos_i / d a_i, computed once per sample i:
//   g = grad_cos[i], inv_ab = 1 / (|a_i| |b_i|), cos_over_aa = cos[i] / |a_i|^2,
// all three 0 for a sample with a zero norm (it is left out: its gradient is 0).
// vec_t: dtype of the [B] inputs (float, or double for double a); math_t: the element math
// type (at::opmath_type of a's dtype: float for half/bfloat16/float, double for double).
template <typename math_t>
struct CosineBackwardCoeffs {
  math_t g, inv_ab, cos_over_aa;

  template <typename vec_t>
  static C10_HOST_DEVICE CosineBackwardCoeffs of_sample(vec_t grad_cos, vec_t cos, vec_t norm_a,
                                                        vec_t norm_b) {
    const bool valid = norm_a > vec_t(0) && norm_b > vec_t(0);
    if (!valid) return {math_t(0), math_t(0), math_t(0)};
    const math_t na = static_cast<math_t>(norm_a), nb = static_cast<math_t>(norm_b);
    return {static_cast<math_t>(grad_cos), math_t(1) / (na * nb),
            static_cast<math_t>(cos) / (na * na)};
  }

  // grad_a for one element (a, b) of the sample: g * (b / (|a| |b|) - cos * a / |a|^2).
  C10_HOST_DEVICE math_t grad(math_t a, math_t b) const {
    return g * (b * inv_ab - a * cos_over_aa);
  }
};

}  // namespace gradalign_fast
