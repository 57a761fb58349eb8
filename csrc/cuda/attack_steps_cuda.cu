// CUDA kernels of the fused attack steps: gradalign_fast::attack_step(_) and random_delta
// (contracts: csrc/gradalign_fast.cpp). The arithmetic is attack_math.h's, in at::opmath_type,
// so the steps are bitwise equal to the CPU kernels.
//
// attack_step(_): TensorIterator + gpu_kernel (any strides, vectorised when contiguous, 32-bit
// index splitting), as the CPU file does with cpu_kernel.
// random_delta: one fused kernel draws U[-radius, radius) from Philox (PyTorch's CUDA generator,
// so torch.manual_seed and torch.Generator reproduce it) and clips to the input box.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Generator.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/native/cuda/Loops.cuh>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <curand_kernel.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>

#include "attack_math.h"
#include "attack_step_iter.h"
#include "cuda/cuda_utils.cuh"
#include "op_checks.h"
#include "sample_layout.h"

namespace gradalign_fast {
namespace cuda {
namespace {

// ------------------------------------------------------------------------------ attack_step
// The element op, in the op's math type (float for half/bfloat16).
template <typename scalar_t>
struct AttackStepOp {
  using math_t = at::opmath_type<scalar_t>;
  math_t alpha, eps, lo, hi;
  bool project;

  __device__ __forceinline__ scalar_t operator()(scalar_t x, scalar_t d, scalar_t g) const {
    return static_cast<scalar_t>(attack_step_value<math_t>(x, d, g, alpha, eps, lo, hi, project));
  }
};

// out = attack_step(x, delta, grad) elementwise, any strides. gpu_kernel launches on the
// current stream and checks the launch.
void attack_step_kernel(const at::Tensor& out, const at::Tensor& x, const at::Tensor& delta,
                        const at::Tensor& grad, double alpha, double eps, double lo, double hi,
                        bool project) {
  auto iter = make_attack_step_iter(out, x, delta, grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, iter.common_dtype(),
                                  "attack_step_cuda", [&] {
    using math_t = at::opmath_type<scalar_t>;
    at::native::gpu_kernel(iter, AttackStepOp<scalar_t>{math_t(alpha), math_t(eps), math_t(lo),
                                                        math_t(hi), project});
  });
}

at::Tensor attack_step_cuda(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& grad,
                            double alpha, double eps, double lo, double hi, bool project) {
  const char* op = "gradalign_fast::attack_step";
  check_attack_inputs(x, delta, grad, alpha, eps, lo, hi, op);
  check_cuda(x, op, "x");
  const at::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);  // x's layout when dense, as the fake kernel says
  if (out.numel() == 0) return out;
  attack_step_kernel(out, x, delta, grad, alpha, eps, lo, hi, project);
  return out;
}

void attack_step_inplace_cuda(const at::Tensor& delta, const at::Tensor& x,
                              const at::Tensor& grad, double alpha, double eps, double lo,
                              double hi, bool project) {
  const char* op = "gradalign_fast::attack_step_";
  check_attack_inputs(x, delta, grad, alpha, eps, lo, hi, op);
  check_cuda(x, op, "x");
  const at::cuda::CUDAGuard guard(x.device());
  if (delta.numel() == 0) return;
  attack_step_kernel(delta, x, delta, grad, alpha, eps, lo, hi, project);
}

// ------------------------------------------------------------------------------ random_delta
// Element e (memory order of the output) gets its random value from a fixed place in the Philox
// stream, whatever the grid: tiles of kTile elements; in tile t, thread j of the block draws
// kDraws times 4 values from subsequence t * kRandThreads + j, draw k covering elements
// t * kTile + (k * kRandThreads + j) * 4 + [0, 4) (coalesced stores).
constexpr int kRandThreads = 256;
constexpr int kDraws = 4;
constexpr int64_t kTile = int64_t(kRandThreads) * 4 * kDraws;
// Offset increment per call, in 32-bit values per subsequence: 2 Philox blocks (8 values) per
// draw for double (curand_uniform2_double twice), 1 block for float. A multiple of 4.
constexpr uint64_t kPhiloxIncrement = 8 * kDraws;

__device__ __forceinline__ void uniform4(curandStatePhilox4_32_10_t* st, float (&u)[4]) {
  const float4 r = curand_uniform4(st);  // (0, 1]
  u[0] = r.x;
  u[1] = r.y;
  u[2] = r.z;
  u[3] = r.w;
}

__device__ __forceinline__ void uniform4(curandStatePhilox4_32_10_t* st, double (&u)[4]) {
  const double2 r = curand_uniform2_double(st), s = curand_uniform2_double(st);
  u[0] = r.x;
  u[1] = r.y;
  u[2] = s.x;
  u[3] = s.y;
}

// out: n elements written in memory order (dense). kClip: x read at the offsets of L (kStrided)
// or at the same linear index as out. vec: out (and x) aligned for 4-element packs.
template <typename scalar_t, bool kClip, bool kStrided>
__global__ void __launch_bounds__(kRandThreads)
    random_delta_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                        DeviceLayout<2> L, int64_t n, at::PhiloxCudaState philox, scalar_t from,
                        scalar_t to, at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi,
                        bool vec) {
  using math_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, 4>;
  const auto seeds = at::cuda::philox::unpack(philox);
  const math_t range = math_t(to) - math_t(from);
  auto clip = [=](scalar_t xv, scalar_t d) {
    return static_cast<scalar_t>(clip_delta_to_box<math_t>(xv, d, lo, hi));
  };
  const int64_t tiles = (n + kTile - 1) / kTile;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    curandStatePhilox4_32_10_t state;
    curand_init(std::get<0>(seeds), static_cast<uint64_t>(tile) * kRandThreads + threadIdx.x,
                std::get<1>(seeds), &state);
#pragma unroll
    for (int k = 0; k < kDraws; ++k) {
      math_t u[4];
      uniform4(&state, u);
      const int64_t e0 = tile * kTile + (int64_t(k) * kRandThreads + threadIdx.x) * 4;
      if (e0 >= n) break;  // so are the later draws of this thread
      P d;
#pragma unroll
      for (int l = 0; l < 4; ++l) {  // as torch.uniform_: (0, 1] mapped to [from, to)
        const scalar_t v = static_cast<scalar_t>(u[l] * range + math_t(from));
        d.v[l] = v == to ? from : v;
      }
      if (!kStrided && vec && e0 + 4 <= n) {
        if constexpr (kClip) {
          const P xv = *reinterpret_cast<const P*>(x + e0);
#pragma unroll
          for (int l = 0; l < 4; ++l) d.v[l] = clip(xv.v[l], d.v[l]);
        }
        *reinterpret_cast<P*>(out + e0) = d;
        continue;
      }
      for (int l = 0; l < 4 && e0 + l < n; ++l) {
        int64_t off[2] = {e0 + l, e0 + l};  // (out, x)
        if constexpr (kStrided) L.offsets(0, e0 + l, off);
        out[off[0]] = kClip ? clip(x[off[1]], d.v[l]) : d.v[l];
      }
    }
  }
}

at::Tensor random_delta_cuda(const at::Tensor& x, double radius, double lo, double hi,
                             bool clip_to_box, std::optional<at::Generator> generator) {
  const char* op = "gradalign_fast::random_delta";
  check_random_delta_inputs(x, radius, lo, hi);
  check_cuda(x, op, "x");
  const at::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);  // non-overlapping and dense: written in memory order
  const int64_t n = out.numel();
  if (n == 0) return out;

  // x's element offsets in out's memory order: the layout of {out, x} as a single sample.
  // A dense x has out's strides (one stride-1 run); others are read through L.
  at::Tensor xs = x;
  DeviceLayout<2> L;
  bool strided = false;
  if (clip_to_box) {
    const at::Tensor out1 = out.unsqueeze(0), x1 = x.unsqueeze(0);
    const auto layout = make_sample_layout<2>({&out1, &x1});
    if (to_device_layout(layout, &L)) {
      strided = !is_single_unit_run(layout);
    } else {  // rare (see kMaxDims): a copy of x in out's layout
      xs = at::empty_like(out);
      xs.copy_(x);
    }
  }

  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator());
  at::PhiloxCudaState philox;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);  // see PyTorch's Note [Acquire lock ...]
    philox = gen->philox_cuda_state(kPhiloxIncrement);
  }

  const int64_t tiles = ceil_div(n, kTile);
  const auto grid = static_cast<unsigned>(std::min(tiles, resident_blocks(kRandThreads)));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "random_delta_cuda",
                                  [&] {
    using math_t = at::opmath_type<scalar_t>;
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const scalar_t* px = xs.const_data_ptr<scalar_t>();
    const auto from = static_cast<scalar_t>(-radius), to = static_cast<scalar_t>(radius);
    const math_t l = lo, h = hi;
    const int64_t pack = 4 * sizeof(scalar_t);
    const bool vec = is_aligned(po, pack) && (!clip_to_box || is_aligned(px, pack));
    if (!clip_to_box)
      random_delta_kernel<scalar_t, false, false>
          <<<grid, kRandThreads, 0, stream>>>(po, px, L, n, philox, from, to, l, h, vec);
    else if (!strided)
      random_delta_kernel<scalar_t, true, false>
          <<<grid, kRandThreads, 0, stream>>>(po, px, L, n, philox, from, to, l, h, vec);
    else
      random_delta_kernel<scalar_t, true, true>
          <<<grid, kRandThreads, 0, stream>>>(po, px, L, n, philox, from, to, l, h, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(gradalign_fast, CUDA, m) {
  m.impl("attack_step", &cuda::attack_step_cuda);
  m.impl("attack_step_", &cuda::attack_step_inplace_cuda);
  m.impl("random_delta", &cuda::random_delta_cuda);
}

}  // namespace gradalign_fast
