// CPU kernel of gradalign_fast::relu_affine_backward (contract: csrc/gradalign_fast.cpp).
// Contiguous float/double: vectorised over each (n, c) plane, parallel over planes;
// channels_last float/double: vectorised over each row of channels. Anything else (other
// strides, half/bfloat16): TensorIterator, scalar, in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/cpu/Loops.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "relu_affine_iter.h"

namespace gradalign_fast {
namespace {

// Dense float/double, as blocks of contiguous memory: an (n, c) plane of H*W values with one
// scale/shift (NCHW, channels_last = false), or a row of C channel values at one (n, h, w)
// with scale/shift read along it (channels_last = true). Loops with both loads unconditional,
// which -O3 vectorises (TensorIterator's vectorised loop takes at most one broadcast input;
// at::vec::Vectorized is only SIMD in PyTorch's per-ISA builds).
template <typename scalar_t, bool channels_last>
void relu_affine_dense(at::Tensor& out, const at::Tensor& grad, const at::Tensor& x,
                       const at::Tensor& scale, const at::Tensor& shift) {
  const int64_t channels = x.size(1);
  const int64_t block = channels_last ? channels : x.numel() / (x.size(0) * channels);
  const int64_t blocks = x.numel() / std::max<int64_t>(block, 1);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* xs = x.const_data_ptr<scalar_t>();
  const scalar_t* a = scale.const_data_ptr<scalar_t>();
  const scalar_t* b = shift.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(block, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* gp = g + p * block;
      const scalar_t* xp = xs + p * block;
      scalar_t* op = o + p * block;
      if constexpr (channels_last) {
        for (int64_t c = 0; c < block; ++c) {
          const scalar_t gv = gp[c], pre = xp[c] * a[c] + b[c];
          op[c] = pre > scalar_t(0) ? gv : scalar_t(0);
        }
      } else {
        const scalar_t av = a[p % channels], bv = b[p % channels];
        for (int64_t i = 0; i < block; ++i) {
          const scalar_t gv = gp[i], pre = xp[i] * av + bv;
          op[i] = pre > scalar_t(0) ? gv : scalar_t(0);
        }
      }
    }
  });
}

at::Tensor relu_affine_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                    const at::Tensor& scale, const at::Tensor& shift) {
  check_relu_affine_inputs(grad, x, scale, shift, "gradalign_fast::relu_affine_backward");
  at::Tensor out = at::empty_like(grad);
  if (out.numel() == 0) return out;
  const bool dense_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  const bool vectors = scale.is_contiguous() && shift.is_contiguous();
  const auto cl = at::MemoryFormat::ChannelsLast;
  const bool nchw = x.is_contiguous() && grad.is_contiguous() && out.is_contiguous();
  const bool nhwc = x.dim() == 4 && x.is_contiguous(cl) && grad.is_contiguous(cl) &&
                    out.is_contiguous(cl);
  if (dense_dtype && vectors && (nchw || nhwc)) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_affine_backward_cpu", [&] {
      if (nchw) {
        relu_affine_dense<scalar_t, false>(out, grad, x, scale, shift);
      } else {
        relu_affine_dense<scalar_t, true>(out, grad, x, scale, shift);
      }
    });
    return out;
  }
  // Any other layout or dtype: TensorIterator (any strides), the pre-activation in float.
  const at::Tensor scale_view = channel_view(scale, x), shift_view = channel_view(shift, x);
  auto iter = make_relu_affine_iter(out, grad, x, scale_view, shift_view);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iter.common_dtype(),
                                  "relu_affine_backward_cpu", [&] {
    using math_t = at::opmath_type<scalar_t>;
    at::native::cpu_kernel(iter, [](scalar_t g, scalar_t xv, scalar_t a, scalar_t b) -> scalar_t {
      const math_t pre = static_cast<math_t>(xv) * static_cast<math_t>(a) + static_cast<math_t>(b);
      return pre > math_t(0) ? g : scalar_t(0);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradalign_fast, CPU, m) {
  m.impl("relu_affine_backward", &relu_affine_backward_cpu);
}

}  // namespace gradalign_fast
