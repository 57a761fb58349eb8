// The TensorIterator of attack_step, shared by the CPU and CUDA kernels:
// out = attack_step(x, delta, grad) elementwise, any strides. `out` may be `delta` itself
// (attack_step_, in place: TensorIterator allows that full overlap); the out-of-place ops pass
// at::empty_like(x), the layout the fake kernel promises.
#pragma once
#include <ATen/TensorIterator.h>

namespace gradalign_fast {

inline at::TensorIterator make_attack_step_iter(const at::Tensor& out, const at::Tensor& x,
                                                const at::Tensor& delta, const at::Tensor& grad) {
  return at::TensorIteratorConfig()
      .add_output(out)
      .add_const_input(x)
      .add_const_input(delta)
      .add_const_input(grad)
      .build();
}

}  // namespace gradalign_fast
