// Helpers shared by the CUDA kernels of gradalign_fast: device checks, aligned packs for vector
// loads, and a device-side copy of a SampleLayout (sample_layout.h) for the strided paths.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "sample_layout.h"

namespace gradalign_fast {
namespace cuda {

// The dispatcher picks the CUDA kernel when any argument is a CUDA tensor; the shape/dtype/
// device checks of op_checks.h then compare the others with this one.
inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": `", name, "` must be a CUDA tensor, got one on ", t.device());
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool is_aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// Resident blocks of `threads` threads the current device holds at once (one full wave).
inline int64_t resident_blocks(int threads) {
  const cudaDeviceProp* p = at::cuda::getCurrentDeviceProperties();
  return static_cast<int64_t>(p->multiProcessorCount) * (p->maxThreadsPerMultiProcessor / threads);
}

// kN elements loaded or stored with one (or, for 32-byte packs, two) vector instructions;
// the address must be a multiple of sizeof(Pack).
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Pack {
  T v[kN];
};

// Merged per-sample dims of a SampleLayout<N>, passed by value to a kernel (it lands in the
// constant bank). Layouts with more merged dims than kMaxDims are rare (an 8-D permuted view);
// the ops copy such inputs to a contiguous tensor first.
constexpr int kMaxDims = 6;

template <int N>
struct DeviceLayout {
  int nd = 0;
  int64_t sizes[kMaxDims] = {};          // merged inner dims, outermost first
  int64_t strides[kMaxDims][N] = {};     // their strides, per tensor (elements)
  int64_t batch_stride[N] = {};

  // Element offsets, from each tensor's data pointer, of element j (memory order of the first
  // tensor) of sample i.
  __device__ __forceinline__ void offsets(int64_t i, int64_t j, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = i * batch_stride[k];
    for (int d = nd - 1; d > 0; --d) {
      const int64_t q = j / sizes[d];
      const int64_t r = j - q * sizes[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += r * strides[d][k];
      j = q;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += j * strides[0][k];
  }
};

// True when every sample is one stride-1 run in every tensor (contiguous, channels_last and
// batch-sliced inputs): the kernels' fast path.
template <int N>
bool is_single_unit_run(const SampleLayout<N>& L) {
  return L.sizes.size() == 1 && L.innermost_unit_stride();
}

// The device copy of L, or false when L has more than kMaxDims merged dims.
template <int N>
bool to_device_layout(const SampleLayout<N>& L, DeviceLayout<N>* out) {
  if (L.sizes.size() > static_cast<size_t>(kMaxDims)) return false;
  out->nd = static_cast<int>(L.sizes.size());
  for (int d = 0; d < out->nd; ++d) {
    out->sizes[d] = L.sizes[d];
    for (int k = 0; k < N; ++k) out->strides[d][k] = L.strides[d][k];
  }
  for (int k = 0; k < N; ++k) out->batch_stride[k] = L.batch_stride[k];
  return true;
}

}  // namespace cuda
}  // namespace gradalign_fast
