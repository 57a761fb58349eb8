// CPU kernels of the fused attack steps: gradalign_fast::attack_step(_) and random_delta.
// TensorIterator handles any strides and layouts (the output follows the inputs' layout) and
// parallelises; the arithmetic is attack_math.h's, in at::opmath_type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <ATen/native/cpu/Loops.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "attack_math.h"
#include "attack_step_iter.h"
#include "op_checks.h"

namespace gradalign_fast {
namespace {

void attack_step_kernel(at::TensorIterator& iter, double alpha, double eps, double lo,
                        double hi, bool project) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iter.common_dtype(),
                                  "attack_step_cpu", [&] {
    using math_t = at::opmath_type<scalar_t>;
    const math_t a = alpha, e = eps, l = lo, h = hi;
    at::native::cpu_kernel(iter, [=](scalar_t x, scalar_t d, scalar_t g) -> scalar_t {
      return static_cast<scalar_t>(attack_step_value<math_t>(x, d, g, a, e, l, h, project));
    });
  });
}

at::Tensor attack_step_cpu(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& grad,
                           double alpha, double eps, double lo, double hi, bool project) {
  check_attack_inputs(x, delta, grad, alpha, eps, lo, hi, "gradalign_fast::attack_step");
  at::Tensor out = at::empty_like(x);
  auto iter = make_attack_step_iter(out, x, delta, grad);
  attack_step_kernel(iter, alpha, eps, lo, hi, project);
  return out;
}

void attack_step_inplace_cpu(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& grad,
                             double alpha, double eps, double lo, double hi, bool project) {
  check_attack_inputs(x, delta, grad, alpha, eps, lo, hi, "gradalign_fast::attack_step_");
  auto iter = make_attack_step_iter(delta, x, delta, grad);
  attack_step_kernel(iter, alpha, eps, lo, hi, project);
}

at::Tensor random_delta_cpu(const at::Tensor& x, double radius, double lo, double hi,
                            bool clip_to_box, std::optional<at::Generator> generator) {
  check_random_delta_inputs(x, radius, lo, hi);
  at::Tensor delta = at::empty_like(x);
  if (delta.numel() == 0) return delta;
  delta.uniform_(-radius, radius, generator);
  if (!clip_to_box) return delta;
  auto iter = at::TensorIteratorConfig()
                  .add_output(delta)
                  .add_const_input(x)
                  .add_const_input(delta)
                  .build();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iter.common_dtype(),
                                  "random_delta_cpu", [&] {
    using math_t = at::opmath_type<scalar_t>;
    const math_t l = lo, h = hi;
    at::native::cpu_kernel(iter, [=](scalar_t xv, scalar_t d) -> scalar_t {
      return static_cast<scalar_t>(clip_delta_to_box<math_t>(xv, d, l, h));
    });
  });
  return delta;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradalign_fast, CPU, m) {
  m.impl("attack_step", &attack_step_cpu);
  m.impl("attack_step_", &attack_step_inplace_cpu);
  m.impl("random_delta", &random_delta_cpu);
}

}  // namespace gradalign_fast
