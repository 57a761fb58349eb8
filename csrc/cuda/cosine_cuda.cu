// CUDA kernels of gradalign_fast::cosine and cosine_backward (contracts: csrc/gradalign_fast.cpp).
//
// Work split, both ops: a [B, S] problem (S = elements per sample) runs on a 1-D grid of
// B * splits blocks; block (i, p) owns elements [p * chunk, (p + 1) * chunk) of sample i, in
// the memory order of sample_layout.h. Contiguous, channels_last and batch-sliced inputs make
// each sample one stride-1 run: 16-byte vector loads where every pointer and batch stride
// allows, else scalar loads. Other layouts decompose the element index per element (strided
// path), and layouts with more than kMaxDims merged dims are copied to contiguous first.
//
// Forward: one pass over a and b accumulating (<a,b>, |a|^2, |b|^2) in at::acc_type (float for
// half/bfloat16/float, double for double), warp-shuffle block reduction. When B is small the
// samples are split over several blocks to fill the device; the blocks then write partial sums
// to a [B, splits, 3] workspace that a second kernel reduces in a fixed order (deterministic,
// no atomics). Backward: one elementwise pass with per-sample scalars.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "cosine_math.h"
#include "cuda/cuda_utils.cuh"
#include "op_checks.h"
#include "sample_layout.h"

namespace gradalign_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // most threads per block
constexpr int kUnroll = 4;     // vector loads in flight per thread and tensor

// ------------------------------------------------------------------------------ work split
struct ChunkPlan {
  int threads;     // a power of two in [32, kThreads]: fewer for short samples
  int64_t chunk;   // elements of one sample per block, a multiple of the vector width
  int64_t splits;  // blocks per sample, ceil(S / chunk)
};

// fill_device: split samples until about half a wave of resident blocks is busy (reductions,
// where B alone may be a few blocks); else blocks of kUnroll vectors per thread (elementwise).
ChunkPlan plan_chunks(int64_t B, int64_t S, int vec, bool fill_device) {
  ChunkPlan p;
  p.threads = 32;
  while (p.threads < kThreads && int64_t(p.threads) * vec < S) p.threads *= 2;
  const int64_t per_thread = fill_device ? 1 : kUnroll;  // vectors per thread, at least
  const int64_t max_splits = ceil_div(S, int64_t(p.threads) * vec * per_thread);
  const int64_t want = fill_device ? std::max<int64_t>(1, resident_blocks(p.threads) / (2 * B))
                                   : max_splits;
  p.splits = std::clamp<int64_t>(want, 1, max_splits);
  p.chunk = ceil_div(ceil_div(S, p.splits), vec) * vec;
  p.splits = ceil_div(S, p.chunk);
  TORCH_CHECK(B * p.splits <= std::numeric_limits<int32_t>::max(),
              "gradalign_fast: batch of ", B, " samples is too large for one CUDA grid");
  return p;
}

// The chunk [begin, end) of sample `sample` that this block owns (see plan_chunks).
struct BlockChunk {
  int64_t block, sample, begin, end;
};

__device__ __forceinline__ BlockChunk block_chunk(int64_t S, int64_t chunk, int64_t splits) {
  BlockChunk c;
  c.block = blockIdx.x;
  c.sample = c.block / splits;
  c.begin = (c.block - c.sample * splits) * chunk;
  c.end = c.begin + chunk < S ? c.begin + chunk : S;
  return c;
}

// ------------------------------------------------------------------------------ reductions
template <typename acc_t>
struct DotNorms {
  acc_t ab = 0, aa = 0, bb = 0;

  __device__ __forceinline__ void add(acc_t x, acc_t y) {
    ab += x * y;
    aa += x * x;
    bb += y * y;
  }
  __device__ __forceinline__ void add(const DotNorms& o) {
    ab += o.ab;
    aa += o.aa;
    bb += o.bb;
  }
};

template <typename acc_t>
__device__ __forceinline__ DotNorms<acc_t> warp_sum(DotNorms<acc_t> s) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    s.ab += __shfl_down_sync(0xffffffffu, s.ab, o);
    s.aa += __shfl_down_sync(0xffffffffu, s.aa, o);
    s.bb += __shfl_down_sync(0xffffffffu, s.bb, o);
  }
  return s;
}

// Sum over the block, valid in thread 0. blockDim.x: a multiple of 32, at most 1024; every
// thread of the block must call it (once per kernel: the shared buffer is not re-synchronised).
template <typename acc_t>
__device__ __forceinline__ DotNorms<acc_t> block_sum(DotNorms<acc_t> s) {
  __shared__ acc_t part[3][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  s = warp_sum(s);
  if (lane == 0) {
    part[0][warp] = s.ab;
    part[1][warp] = s.aa;
    part[2][warp] = s.bb;
  }
  __syncthreads();
  DotNorms<acc_t> t;
  if (warp == 0) {
    if (lane < static_cast<int>(blockDim.x / 32)) {
      t.ab = part[0][lane];
      t.aa = part[1][lane];
      t.bb = part[2][lane];
    }
    t = warp_sum(t);
  }
  return t;
}

__device__ __forceinline__ float sqrt_acc(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_acc(double v) { return sqrt(v); }

// The outputs of sample i from its sums, as the CPU kernel: cos = 0 for a zero norm.
template <typename acc_t>
__device__ __forceinline__ void write_cosine(const DotNorms<acc_t>& s, int64_t i,
                                             acc_t* __restrict__ cos, acc_t* __restrict__ na,
                                             acc_t* __restrict__ nb) {
  const acc_t norm_a = sqrt_acc(s.aa), norm_b = sqrt_acc(s.bb);
  const bool valid = s.aa > 0 && s.bb > 0;
  cos[i] = valid ? s.ab / norm_a / norm_b : acc_t(0);  // no norm product: it underflows
  na[i] = norm_a;
  nb[i] = norm_b;
}

// Sums over one stride-1 run of n elements; a and b aligned to kVec elements.
template <int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void accumulate_run(const scalar_t* __restrict__ a,
                                               const scalar_t* __restrict__ b, int64_t n,
                                               DotNorms<acc_t>& s) {
  using P = Pack<scalar_t, kVec>;
  const P* va = reinterpret_cast<const P*>(a);
  const P* vb = reinterpret_cast<const P*>(b);
  const int64_t nv = n / kVec, step = blockDim.x;
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * step < nv; v += kUnroll * step) {  // kUnroll loads in flight
    P xa[kUnroll], xb[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      xa[u] = va[v + u * step];
      xb[u] = vb[v + u * step];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int e = 0; e < kVec; ++e) s.add(acc_t(xa[u].v[e]), acc_t(xb[u].v[e]));
  }
  for (; v < nv; v += step) {
    const P xa = va[v], xb = vb[v];
#pragma unroll
    for (int e = 0; e < kVec; ++e) s.add(acc_t(xa.v[e]), acc_t(xb.v[e]));
  }
  for (int64_t j = nv * kVec + threadIdx.x; j < n; j += step) s.add(acc_t(a[j]), acc_t(b[j]));
}

// grid: B * splits blocks. splits == 1: writes the outputs; else partial[block][3].
template <typename scalar_t, typename acc_t, int kVec, bool kStrided>
__global__ void __launch_bounds__(kThreads)
    cosine_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                  DeviceLayout<2> L, int64_t S, int64_t chunk, int64_t splits,
                  acc_t* __restrict__ partial, acc_t* __restrict__ cos, acc_t* __restrict__ na,
                  acc_t* __restrict__ nb) {
  const BlockChunk c = block_chunk(S, chunk, splits);
  const int64_t blk = c.block, i = c.sample, begin = c.begin, end = c.end;
  DotNorms<acc_t> s;
  if constexpr (kStrided) {
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      int64_t off[2];
      L.offsets(i, j, off);
      s.add(acc_t(a[off[0]]), acc_t(b[off[1]]));
    }
  } else {
    accumulate_run<kVec>(a + i * L.batch_stride[0] + begin, b + i * L.batch_stride[1] + begin,
                         end - begin, s);
  }
  s = block_sum(s);
  if (threadIdx.x != 0) return;
  if (splits == 1) {
    write_cosine(s, i, cos, na, nb);
  } else {
    partial[3 * blk + 0] = s.ab;
    partial[3 * blk + 1] = s.aa;
    partial[3 * blk + 2] = s.bb;
  }
}

// One warp per sample sums its `splits` partials in a fixed order. grid: ceil(B * 32 / threads).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cosine_finalize_kernel(const acc_t* __restrict__ partial, int64_t B, int64_t splits,
                           acc_t* __restrict__ cos, acc_t* __restrict__ na,
                           acc_t* __restrict__ nb) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= B) return;  // whole warps: i is the same for the 32 lanes
  DotNorms<acc_t> s;
  for (int64_t p = lane; p < splits; p += 32) {
    const acc_t* q = partial + 3 * (i * splits + p);
    s.add(DotNorms<acc_t>{q[0], q[1], q[2]});
  }
  s = warp_sum(s);
  if (lane == 0) write_cosine(s, i, cos, na, nb);
}

template <typename scalar_t, typename acc_t, int kVec, bool kStrided>
void launch_cosine(const at::Tensor& a, const at::Tensor& b, const DeviceLayout<2>& L,
                   int64_t B, int64_t S, at::Tensor& cos, at::Tensor& na, at::Tensor& nb) {
  const ChunkPlan p = plan_chunks(B, S, kVec, /*fill_device=*/true);
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partial;
  if (p.splits > 1) partial = at::empty({B * p.splits * 3}, cos.options());
  acc_t* pc = cos.mutable_data_ptr<acc_t>();
  acc_t* pna = na.mutable_data_ptr<acc_t>();
  acc_t* pnb = nb.mutable_data_ptr<acc_t>();
  acc_t* pp = p.splits > 1 ? partial.mutable_data_ptr<acc_t>() : nullptr;
  cosine_kernel<scalar_t, acc_t, kVec, kStrided>
      <<<static_cast<unsigned>(B * p.splits), p.threads, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), L, S, p.chunk, p.splits,
          pp, pc, pna, pnb);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.splits > 1) {
    cosine_finalize_kernel<acc_t><<<static_cast<unsigned>(ceil_div(B * 32, kThreads)), kThreads,
                                    0, stream>>>(pp, B, p.splits, pc, pna, pnb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_cuda(const at::Tensor& a,
                                                           const at::Tensor& b) {
  const char* op = "gradalign_fast::cosine";
  check_cosine_inputs(a, b, op);
  check_cuda(a, op, "a");
  const at::cuda::CUDAGuard guard(a.device());
  const int64_t B = a.size(0);
  const auto opts = a.options().dtype(cosine_acc_dtype(a.scalar_type()));
  at::Tensor cos = at::empty({B}, opts), na = at::empty({B}, opts), nb = at::empty({B}, opts);
  if (B == 0) return {cos, na, nb};
  const auto layout = make_sample_layout<2>({&a, &b});
  const int64_t S = layout.sample_numel;
  if (S == 0) {  // empty samples: zero norms, cos = 0
    cos.zero_();
    na.zero_();
    nb.zero_();
    return {cos, na, nb};
  }
  DeviceLayout<2> L;
  if (!to_device_layout(layout, &L)) return cosine_cuda(a.contiguous(), b.contiguous());
  const bool strided = !is_single_unit_run(layout);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cosine_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec = !strided && is_aligned(a.const_data_ptr(), 16) &&
                     is_aligned(b.const_data_ptr(), 16) && L.batch_stride[0] % kVec == 0 &&
                     L.batch_stride[1] % kVec == 0;
    if (strided)
      launch_cosine<scalar_t, acc_t, 1, true>(a, b, L, B, S, cos, na, nb);
    else if (vec)
      launch_cosine<scalar_t, acc_t, kVec, false>(a, b, L, B, S, cos, na, nb);
    else
      launch_cosine<scalar_t, acc_t, 1, false>(a, b, L, B, S, cos, na, nb);
  });
  return {cos, na, nb};
}

// ------------------------------------------------------------------------------ backward
// out_i = CosineBackwardCoeffs::grad(a_i, b_i) (cosine_math.h), block (i, p) as in the forward.
template <typename scalar_t, typename vec_t, int kVec, bool kStrided>
__global__ void __launch_bounds__(kThreads)
    cosine_backward_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ a,
                           const scalar_t* __restrict__ b, DeviceLayout<3> L, int64_t S,
                           int64_t chunk, int64_t splits, const vec_t* __restrict__ grad_cos,
                           const vec_t* __restrict__ cos, const vec_t* __restrict__ norm_a,
                           const vec_t* __restrict__ norm_b) {
  using math_t = at::opmath_type<scalar_t>;
  const BlockChunk c = block_chunk(S, chunk, splits);
  const int64_t i = c.sample, begin = c.begin, end = c.end;
  // The per-sample scalars, as the CPU kernel computes them (cosine_math.h).
  const auto k = CosineBackwardCoeffs<math_t>::of_sample(grad_cos[i], cos[i], norm_a[i],
                                                          norm_b[i]);
  auto f = [=](scalar_t x, scalar_t y) { return static_cast<scalar_t>(k.grad(x, y)); };
  if constexpr (kStrided) {
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      int64_t off[3];
      L.offsets(i, j, off);
      out[off[0]] = f(a[off[1]], b[off[2]]);
    }
  } else {
    using P = Pack<scalar_t, kVec>;
    scalar_t* o = out + i * L.batch_stride[0] + begin;
    const scalar_t* x = a + i * L.batch_stride[1] + begin;
    const scalar_t* y = b + i * L.batch_stride[2] + begin;
    const int64_t n = end - begin, nv = n / kVec;
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      const P xv = reinterpret_cast<const P*>(x)[v], yv = reinterpret_cast<const P*>(y)[v];
      P ov;
#pragma unroll
      for (int e = 0; e < kVec; ++e) ov.v[e] = f(xv.v[e], yv.v[e]);
      reinterpret_cast<P*>(o)[v] = ov;
    }
    for (int64_t j = nv * kVec + threadIdx.x; j < n; j += blockDim.x) o[j] = f(x[j], y[j]);
  }
}

template <typename scalar_t, typename vec_t, int kVec, bool kStrided>
void launch_cosine_backward(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                            const DeviceLayout<3>& L, int64_t B, int64_t S,
                            const at::Tensor* vecs /* grad_cos, cos, norm_a, norm_b */) {
  const ChunkPlan p = plan_chunks(B, S, kVec, /*fill_device=*/false);
  cosine_backward_kernel<scalar_t, vec_t, kVec, kStrided>
      <<<static_cast<unsigned>(B * p.splits), p.threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          out.mutable_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
          b.const_data_ptr<scalar_t>(), L, S, p.chunk, p.splits, vecs[0].const_data_ptr<vec_t>(),
          vecs[1].const_data_ptr<vec_t>(), vecs[2].const_data_ptr<vec_t>(),
          vecs[3].const_data_ptr<vec_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor cosine_backward_cuda(const at::Tensor& grad_cos, const at::Tensor& a,
                                const at::Tensor& b, const at::Tensor& cos,
                                const at::Tensor& norm_a, const at::Tensor& norm_b) {
  check_cosine_backward_inputs(grad_cos, a, b, cos, norm_a, norm_b);
  check_cuda(a, "gradalign_fast::cosine_backward", "a");
  const at::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty_like(a);  // keeps a's layout (channels_last, ...) when dense
  if (out.numel() == 0) return out;
  const auto layout = make_sample_layout<3>({&out, &a, &b});
  DeviceLayout<3> L;
  if (!to_device_layout(layout, &L)) {  // rare: see kMaxDims
    out.copy_(cosine_backward_cuda(grad_cos, a.contiguous(), b.contiguous(), cos, norm_a,
                                   norm_b));
    return out;
  }
  const bool strided = !is_single_unit_run(layout);
  const int64_t B = a.size(0), S = layout.sample_numel;
  // The [B] vectors are tiny: contiguous, in the accumulation dtype (grad_cos converted).
  const auto acc = cosine_acc_dtype(a.scalar_type());
  const at::Tensor vecs[4] = {grad_cos.to(acc).contiguous(), cos.contiguous(),
                              norm_a.contiguous(), norm_b.contiguous()};

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "cosine_backward_cuda", [&] {
        using vec_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        constexpr int kVec = 16 / sizeof(scalar_t);
        const bool vec = !strided && is_aligned(out.const_data_ptr(), 16) &&
                         is_aligned(a.const_data_ptr(), 16) &&
                         is_aligned(b.const_data_ptr(), 16) && L.batch_stride[0] % kVec == 0 &&
                         L.batch_stride[1] % kVec == 0 && L.batch_stride[2] % kVec == 0;
        if (strided)
          launch_cosine_backward<scalar_t, vec_t, 1, true>(out, a, b, L, B, S, vecs);
        else if (vec)
          launch_cosine_backward<scalar_t, vec_t, kVec, false>(out, a, b, L, B, S, vecs);
        else
          launch_cosine_backward<scalar_t, vec_t, 1, false>(out, a, b, L, B, S, vecs);
      });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(gradalign_fast, CUDA, m) {
  m.impl("cosine", &cuda::cosine_cuda);
  m.impl("cosine_backward", &cuda::cosine_backward_cuda);
}

}  // namespace gradalign_fast
