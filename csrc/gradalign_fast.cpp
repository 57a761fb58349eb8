// Operator schemas of the gradalign_fast namespace, declared once. Kernels live in
// csrc/cpu (CPU dispatch key) and csrc/cuda (CUDA dispatch key); fake kernels and autograd
// are registered from Python (gradalign_fast/ops/_registrations.py).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#ifdef GRADALIGN_FAST_WITH_CUDA
#include <cuda.h>
#endif

namespace gradalign_fast {
namespace {

// The CUDA toolkit version the kernels were built with (e.g. 13000), or -1 for a CPU-only
// build (torchvision's _cuda_version): what gradalign_fast.ops reads to choose kernels.
int64_t cuda_version() {
#ifdef GRADALIGN_FAST_WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

}  // namespace
}  // namespace gradalign_fast

TORCH_LIBRARY(gradalign_fast, m) {
  // Per-sample cosine of two gradient batches a, b of shape [B, ...]:
  //   cos[i] = <a_i, b_i> / (|a_i| |b_i|), and 0 where |a_i| = 0 or |b_i| = 0.
  // Returns (cos, norm_a, norm_b), each [B] in the accumulation dtype (float for
  // float/half/bfloat16 inputs, double for double). A norm is 0 when the sum of squares is 0
  // in the kernel's accumulator: double on CPU and float on CUDA for float inputs, so a float
  // sample with |a_i| below ~1e-19 is left out on CUDA but not on CPU.
  m.def("cosine(Tensor a, Tensor b) -> (Tensor, Tensor, Tensor)");
  // Gradient of sum_i grad_cos[i] * cos[i] with respect to `a` (call with a and b swapped for
  // the gradient with respect to b):
  //   grad_a_i = grad_cos[i] * (b_i / (|a_i| |b_i|) - cos[i] * a_i / |a_i|^2), 0 for zero norms
  // (and for norms below the smallest normal number of the math type, whose reciprocal overflows),
  // computed with one norm per division (csrc/cosine_math.h): no underflowing norm product.
  // Returns a tensor shaped, typed and laid out like `a`.
  m.def("cosine_backward(Tensor grad_cos, Tensor a, Tensor b, Tensor cos, Tensor norm_a, "
        "Tensor norm_b) -> Tensor");
  // One signed-gradient attack step on a perturbation delta of the input x:
  //   d = delta + alpha * sign(grad); if project: d = clamp(d, -eps, eps);
  //   d = clamp(x + d, lo, hi) - x
  // sign is torch.sign: sign(0) = sign(NaN) = 0, so a NaN gradient element takes no step.
  // FGSM: delta = 0, alpha = eps. PGD: project = true. N-FGSM: project = false.
  m.def("attack_step(Tensor x, Tensor delta, Tensor grad, float alpha, float eps, float lo, "
        "float hi, bool project) -> Tensor");
  // attack_step written into delta, the tensor it mutates and so its first argument (the
  // trailing underscore's `self`); gradalign_fast.ops.attack_step_ keeps attack_step's order.
  m.def("attack_step_(Tensor(a!) delta, Tensor x, Tensor grad, float alpha, float eps, "
        "float lo, float hi, bool project) -> ()");
  // A random perturbation delta ~ U([-radius, radius]^d) shaped like x; with clip_to_box,
  // delta = clamp(x + delta, lo, hi) - x. FGSM-RS start: radius = eps; N-FGSM noise: 2 eps.
  // nondeterministic_seeded: two identical calls give different results, so graph passes must
  // not merge them.
  m.def("random_delta(Tensor x, float radius, float lo, float hi, bool clip_to_box, "
        "Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  // Backward of r = relu(x * scale + shift) (a ReLU after a train-mode BatchNorm, per channel
  // c = dim 1) with respect to r's input, without r: out = grad where x*scale[c] + shift[c] > 0,
  // else 0. x, grad: [B, C, ...] of one dtype; scale, shift: [C] of x's dtype. The output is
  // shaped, typed and laid out like grad. Lets GradAlign's double backward recompute nothing
  // for the ReLU masks it no longer keeps (gradalign_fast/double_backward.py).
  m.def("relu_affine_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift) -> Tensor");
  // CUDA toolkit version of the build (CUDA_VERSION), -1 without CUDA kernels. No tensors:
  // one implementation for every backend.
  m.def("_cuda_version() -> int", &gradalign_fast::cuda_version);
}
