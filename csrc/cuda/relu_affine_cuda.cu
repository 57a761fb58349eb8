// CUDA kernel of gradalign_fast::relu_affine_backward (contract: csrc/gradalign_fast.cpp):
// TensorIterator + gpu_kernel (any strides, vectorised when contiguous, 32-bit index
// splitting) on the current stream under a device guard, as the CPU file with cpu_kernel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/native/cuda/Loops.cuh>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "relu_affine_iter.h"

namespace gradalign_fast {
namespace cuda {
namespace {

// x * a + b rounded twice, as the CPU kernel (no FMA contraction): the masks are bitwise equal.
__device__ __forceinline__ float mul_add_rn(float x, float a, float b) {
  return __fadd_rn(__fmul_rn(x, a), b);
}
__device__ __forceinline__ double mul_add_rn(double x, double a, double b) {
  return __dadd_rn(__dmul_rn(x, a), b);
}

template <typename scalar_t>
struct ReluAffineBackwardOp {
  using math_t = at::opmath_type<scalar_t>;
  __device__ __forceinline__ scalar_t operator()(scalar_t g, scalar_t x, scalar_t a,
                                                 scalar_t b) const {
    const math_t pre = mul_add_rn(static_cast<math_t>(x), static_cast<math_t>(a),
                                  static_cast<math_t>(b));
    return pre > math_t(0) ? g : scalar_t(0);
  }
};

at::Tensor relu_affine_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                     const at::Tensor& scale, const at::Tensor& shift) {
  const char* op = "gradalign_fast::relu_affine_backward";
  check_relu_affine_inputs(grad, x, scale, shift, op);
  check_cuda(x, op, "x");
  const at::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(grad);
  if (out.numel() == 0) return out;
  const at::Tensor scale_view = channel_view(scale, x), shift_view = channel_view(shift, x);
  auto iter = make_relu_affine_iter(out, grad, x, scale_view, shift_view);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iter.common_dtype(),
                                  "relu_affine_backward_cuda", [&] {
    at::native::gpu_kernel(iter, ReluAffineBackwardOp<scalar_t>{});
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradalign_fast, CUDA, m) {
  m.impl("relu_affine_backward", &relu_affine_backward_cuda);
}

}  // namespace cuda
}  // namespace gradalign_fast
