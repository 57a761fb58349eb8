// Argument checks and the TensorIterator of relu_affine_backward, shared by the CPU and CUDA
// kernels: out = grad where x * scale[c] + shift[c] > 0, else 0 (c = dim 1), any strides; the
// per-channel [C] vectors enter as broadcast views [1, C, 1, ...] (no copies).
#pragma once
#include <ATen/TensorIterator.h>

#include "op_checks.h"

namespace gradalign_fast {

inline void check_relu_affine_inputs(const at::Tensor& grad, const at::Tensor& x,
                                     const at::Tensor& scale, const at::Tensor& shift,
                                     const char* op) {
  check_float_tensor(x, op, "x");
  check_float_tensor(grad, op, "grad");
  check_like(grad, x, op, "grad", "x");
  TORCH_CHECK(x.dim() >= 2, op, ": `x` must be [B, C, ...] (channels in dim 1), got shape ",
              x.sizes());
  const at::Tensor* vecs[] = {&scale, &shift};
  const char* names[] = {"scale", "shift"};
  for (int k = 0; k < 2; ++k) {
    check_float_tensor(*vecs[k], op, names[k]);
    TORCH_CHECK(vecs[k]->dim() == 1 && vecs[k]->size(0) == x.size(1), op, ": `", names[k],
                "` must have shape [", x.size(1), "] (one value per channel of x), got ",
                vecs[k]->sizes());
    TORCH_CHECK(vecs[k]->scalar_type() == x.scalar_type(), op, ": `", names[k],
                "` must have the dtype of `x` (", x.scalar_type(), "), got ",
                vecs[k]->scalar_type());
    TORCH_CHECK(vecs[k]->device() == x.device(), op, ": `", names[k], "` is on ",
                vecs[k]->device(), " but `x` is on ", x.device());
  }
}

// [C] -> [1, C, 1, ...] with x's number of dims: a view, broadcast by the iterator.
inline at::Tensor channel_view(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = v.size(0);
  return v.view(shape);
}

// scale_view, shift_view: channel_view(...)s, alive while the iterator is (it borrows them).
inline at::TensorIterator make_relu_affine_iter(const at::Tensor& out, const at::Tensor& grad,
                                                const at::Tensor& x, const at::Tensor& scale_view,
                                                const at::Tensor& shift_view) {
  return at::TensorIteratorConfig()
      .add_output(out)
      .add_const_input(grad)
      .add_const_input(x)
      .add_const_input(scale_view)
      .add_const_input(shift_view)
      .build();
}

}  // namespace gradalign_fast
