// Argument checks shared by the CPU and CUDA kernels, with messages that name the argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <limits>

namespace gradalign_fast {

// The dtypes the kernels are compiled for (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)).
// Not at::isFloatingType, which also admits the float8/float4 dtypes: no kernel handles them,
// and the empty-input early returns would otherwise accept them silently.
inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": `", name, "` is undefined");
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": `", name,
              "` must be a floating-point tensor (float, double, half or bfloat16), got ",
              t.scalar_type());
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": `", name, "` must have the shape of `", ref_name,
              "` ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": `", name, "` must have the dtype of `",
              ref_name, "` (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(), " but `",
              ref_name, "` is on ", ref.device());
}

// The dtype of the per-sample outputs of the cosine: float, or double for double inputs.
inline at::ScalarType cosine_acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks of the cosine inputs; a and b: [B, ...] with B >= 0.
inline void check_cosine_inputs(const at::Tensor& a, const at::Tensor& b, const char* op) {
  check_float_tensor(a, op, "a");
  check_float_tensor(b, op, "b");
  check_like(b, a, op, "b", "a");
  TORCH_CHECK(a.dim() >= 1, op, ": inputs need a batch dimension, got a 0-dim tensor");
}

inline void check_cosine_backward_inputs(const at::Tensor& grad_cos, const at::Tensor& a,
                                         const at::Tensor& b, const at::Tensor& cos,
                                         const at::Tensor& norm_a, const at::Tensor& norm_b) {
  const char* op = "gradalign_fast::cosine_backward";
  check_cosine_inputs(a, b, op);
  const auto acc = cosine_acc_dtype(a.scalar_type());
  const at::Tensor* vecs[] = {&grad_cos, &cos, &norm_a, &norm_b};
  const char* names[] = {"grad_cos", "cos", "norm_a", "norm_b"};
  for (int k = 0; k < 4; ++k) {
    check_float_tensor(*vecs[k], op, names[k]);
    TORCH_CHECK(vecs[k]->dim() == 1 && vecs[k]->size(0) == a.size(0), op, ": `", names[k],
                "` must have shape [", a.size(0), "] (one value per sample), got ",
                vecs[k]->sizes());
    TORCH_CHECK(vecs[k]->device() == a.device(), op, ": `", names[k], "` is on ",
                vecs[k]->device(), " but `a` is on ", a.device());
  }
  TORCH_CHECK(cos.scalar_type() == acc && norm_a.scalar_type() == acc &&
                  norm_b.scalar_type() == acc,
              op, ": cos, norm_a and norm_b must be ", acc, " (as returned by cosine)");
}

inline void check_attack_inputs(const at::Tensor& x, const at::Tensor& delta,
                                const at::Tensor& grad, double alpha, double eps, double lo,
                                double hi, const char* op) {
  check_float_tensor(x, op, "x");
  check_like(delta, x, op, "delta", "x");
  check_like(grad, x, op, "grad", "x");
  TORCH_CHECK(alpha >= 0, op, ": step size `alpha` must be >= 0, got ", alpha);
  TORCH_CHECK(eps >= 0, op, ": radius `eps` must be >= 0, got ", eps);
  TORCH_CHECK(lo <= hi, op, ": input box needs lo <= hi, got lo=", lo, " hi=", hi);
}

// The largest finite value of a kernel dtype (is_kernel_dtype).
inline double max_finite(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return std::numeric_limits<double>::max();
    case at::kFloat: return std::numeric_limits<float>::max();
    case at::kHalf: return static_cast<double>(std::numeric_limits<c10::Half>::max());
    default: return static_cast<double>(std::numeric_limits<c10::BFloat16>::max());
  }
}

inline void check_random_delta_inputs(const at::Tensor& x, double radius, double lo, double hi) {
  const char* op = "gradalign_fast::random_delta";
  check_float_tensor(x, op, "x");
  TORCH_CHECK(radius >= 0, op, ": `radius` must be >= 0, got ", radius);
  // The draw spans 2 * radius: finite in x's dtype, as uniform_ requires (else inf - inf = NaN).
  TORCH_CHECK(2 * radius <= max_finite(x.scalar_type()), op, ": 2 * `radius` must be <= the "
              "largest ", x.scalar_type(), " (", max_finite(x.scalar_type()), "), got radius=",
              radius);
  TORCH_CHECK(lo <= hi, op, ": input box needs lo <= hi, got lo=", lo, " hi=", hi);
}

}  // namespace gradalign_fast
