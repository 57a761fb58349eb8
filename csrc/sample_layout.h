// Per-sample memory layout shared by several tensors of one shape [B, ...].
//
// The per-sample reductions (cosine) only need the elements of a sample visited in the same
// order in every tensor, not in logical order. So the inner dims are put in the memory order of
// the first tensor and merged wherever every tensor allows: contiguous and channels_last inputs
// collapse to a single run of stride 1, anything else is walked with its own strides (no copy).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <vector>

namespace gradalign_fast {

template <int N>
struct SampleLayout {
  int64_t batch = 0;
  int64_t sample_numel = 0;
  std::array<int64_t, N> batch_stride{};
  std::vector<int64_t> sizes;                   // merged inner dims, outermost first
  std::vector<std::array<int64_t, N>> strides;  // their strides, per tensor (elements)

  bool innermost_unit_stride() const {
    for (int k = 0; k < N; ++k)
      if (strides.back()[k] != 1) return false;
    return true;
  }

  // Calls run(offsets, len, inner_strides) for every maximal innermost run of sample `i`;
  // offsets are element offsets from each tensor's data pointer.
  template <typename F>
  void for_each_run(int64_t i, F&& run) const {
    if (sample_numel == 0) return;
    const int nd = static_cast<int>(sizes.size());
    std::array<int64_t, N> base;
    for (int k = 0; k < N; ++k) base[k] = i * batch_stride[k];
    const int64_t len = sizes[nd - 1];
    if (nd == 1) {
      run(base, len, strides[0]);
      return;
    }
    std::vector<int64_t> counter(nd - 1, 0);
    std::array<int64_t, N> off = base;
    while (true) {
      run(off, len, strides[nd - 1]);
      int d = nd - 2;
      for (; d >= 0; --d) {
        if (++counter[d] < sizes[d]) {
          for (int k = 0; k < N; ++k) off[k] += strides[d][k];
          break;
        }
        for (int k = 0; k < N; ++k) off[k] -= strides[d][k] * (sizes[d] - 1);
        counter[d] = 0;
      }
      if (d < 0) return;
    }
  }
};

template <int N>
SampleLayout<N> make_sample_layout(const std::array<const at::Tensor*, N>& ts) {
  const at::Tensor& t0 = *ts[0];
  SampleLayout<N> L;
  L.batch = t0.size(0);
  L.sample_numel = L.batch == 0 ? 0 : t0.numel() / L.batch;
  for (int k = 0; k < N; ++k) L.batch_stride[k] = ts[k]->stride(0);

  std::vector<int> dims;
  for (int d = 1; d < t0.dim(); ++d)
    if (t0.size(d) != 1) dims.push_back(d);
  // Memory order of the first tensor: largest stride outermost.
  std::stable_sort(dims.begin(), dims.end(),
                   [&](int p, int q) { return t0.stride(p) > t0.stride(q); });
  for (int d : dims) {
    std::array<int64_t, N> st;
    for (int k = 0; k < N; ++k) st[k] = ts[k]->stride(d);
    const int64_t sz = t0.size(d);
    if (!L.sizes.empty()) {
      bool mergeable = true;
      for (int k = 0; k < N; ++k) mergeable &= L.strides.back()[k] == st[k] * sz;
      if (mergeable) {  // outer dim (sizes.back()) followed contiguously by this one
        L.sizes.back() *= sz;
        L.strides.back() = st;
        continue;
      }
    }
    L.sizes.push_back(sz);
    L.strides.push_back(st);
  }
  if (L.sizes.empty()) {  // one element per sample
    L.sizes.push_back(1);
    L.strides.push_back({});
    L.strides.back().fill(1);
  }
  return L;
}

}  // namespace gradalign_fast
