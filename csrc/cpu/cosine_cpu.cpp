// CPU kernels of gradalign_fast::cosine and cosine_backward: parallel over the batch
// (at::parallel_for), one pass over each sample, accumulation in at::acc_type (double for
// float, float for half/bfloat16), any strides.
#include <ATen/AccumulateType.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>

#include "cosine_math.h"
#include "op_checks.h"
#include "sample_layout.h"

namespace gradalign_fast {
namespace {

constexpr int kUnroll = 8;  // independent accumulators: lets the compiler vectorise the sums

template <typename scalar_t, typename acc_t>
struct DotNorms {
  acc_t ab = 0, aa = 0, bb = 0;

  void add_run(const scalar_t* a, int64_t sa, const scalar_t* b, int64_t sb, int64_t n) {
    int64_t i = 0;
    if (sa == 1 && sb == 1) {
      acc_t pab[kUnroll] = {}, paa[kUnroll] = {}, pbb[kUnroll] = {};
      for (; i + kUnroll <= n; i += kUnroll) {
        for (int k = 0; k < kUnroll; ++k) {
          const acc_t x = static_cast<acc_t>(a[i + k]), y = static_cast<acc_t>(b[i + k]);
          pab[k] += x * y;
          paa[k] += x * x;
          pbb[k] += y * y;
        }
      }
      for (int k = 0; k < kUnroll; ++k) {
        ab += pab[k];
        aa += paa[k];
        bb += pbb[k];
      }
    }
    for (; i < n; ++i) {
      const acc_t x = static_cast<acc_t>(a[i * sa]), y = static_cast<acc_t>(b[i * sb]);
      ab += x * y;
      aa += x * x;
      bb += y * y;
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_cpu(const at::Tensor& a,
                                                          const at::Tensor& b) {
  check_cosine_inputs(a, b, "gradalign_fast::cosine");
  const int64_t B = a.size(0);
  const auto opts = a.options().dtype(cosine_acc_dtype(a.scalar_type()));
  at::Tensor cos = at::empty({B}, opts), na = at::empty({B}, opts), nb = at::empty({B}, opts);
  if (B == 0) return {cos, na, nb};
  const auto L = make_sample_layout<2>({&a, &b});

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cosine_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    using out_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    out_t* pc = cos.mutable_data_ptr<out_t>();
    out_t* pna = na.mutable_data_ptr<out_t>();
    out_t* pnb = nb.mutable_data_ptr<out_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        DotNorms<scalar_t, acc_t> s;
        L.for_each_run(i, [&](const std::array<int64_t, 2>& off, int64_t n,
                              const std::array<int64_t, 2>& st) {
          s.add_run(pa + off[0], st[0], pb + off[1], st[1], n);
        });
        const acc_t norm_a = std::sqrt(s.aa), norm_b = std::sqrt(s.bb);
        const bool valid = s.aa > 0 && s.bb > 0;
        pc[i] = static_cast<out_t>(valid ? s.ab / norm_a / norm_b : acc_t(0));  // no norm product: it underflows
        pna[i] = static_cast<out_t>(norm_a);
        pnb[i] = static_cast<out_t>(norm_b);
      }
    });
  });
  return {cos, na, nb};
}

at::Tensor cosine_backward_cpu(const at::Tensor& grad_cos, const at::Tensor& a,
                               const at::Tensor& b, const at::Tensor& cos,
                               const at::Tensor& norm_a, const at::Tensor& norm_b) {
  check_cosine_backward_inputs(grad_cos, a, b, cos, norm_a, norm_b);
  at::Tensor out = at::empty_like(a);  // keeps a's layout (channels_last, ...) when dense
  const int64_t B = a.size(0);
  if (out.numel() == 0) return out;
  const auto L = make_sample_layout<3>({&out, &a, &b});
  // The [B] vectors are tiny: contiguous, in the accumulation dtype (grad_cos converted, as
  // the CUDA kernel does).
  const auto acc = cosine_acc_dtype(a.scalar_type());
  const at::Tensor g = grad_cos.to(acc).contiguous(), c = cos.contiguous();
  const at::Tensor nav = norm_a.contiguous(), nbv = norm_b.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "cosine_backward_cpu", [&] {
        using vec_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        using math_t = at::opmath_type<scalar_t>;
        scalar_t* po = out.mutable_data_ptr<scalar_t>();
        const scalar_t* pa = a.const_data_ptr<scalar_t>();
        const scalar_t* pb = b.const_data_ptr<scalar_t>();
        const vec_t* pg = g.const_data_ptr<vec_t>();
        const vec_t* pc = c.const_data_ptr<vec_t>();
        const vec_t* pna = nav.const_data_ptr<vec_t>();
        const vec_t* pnb = nbv.const_data_ptr<vec_t>();
        at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const auto k = CosineBackwardCoeffs<math_t>::of_sample(pg[i], pc[i], pna[i], pnb[i]);
            L.for_each_run(i, [&](const std::array<int64_t, 3>& off, int64_t n,
                                  const std::array<int64_t, 3>& st) {
              scalar_t* o = po + off[0];
              const scalar_t* x = pa + off[1];
              const scalar_t* y = pb + off[2];
              for (int64_t j = 0; j < n; ++j) {
                o[j * st[0]] = static_cast<scalar_t>(k.grad(x[j * st[1]], y[j * st[2]]));
              }
            });
          }
        });
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradalign_fast, CPU, m) {
  m.impl("cosine", &cosine_cpu);
  m.impl("cosine_backward", &cosine_backward_cpu);
}

}  // namespace gradalign_fast
