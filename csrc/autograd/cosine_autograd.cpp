// Autograd of gradalign_fast::cosine and cosine_backward, in C++ (torchvision's
// csrc/ops/autograd pattern): the op GradAlign calls every step runs its forward and backward
// with no Python in between (a Python autograd Function would add interpreter work to every
// step). Device-independent: the saved tensors go back to the dispatcher.
//
// a, b: [B, ...]; cos, norm_a, norm_b: [B]. d cos / d a is cosine_backward(grad_cos, a, b,
// ...), d cos / d b the same op with the roles of a and b swapped; the norms are returned
// for masking and monitoring and carry no gradient. cosine_backward is not itself
// differentiable (GradAlign differentiates the cosine once): its autograd kernel records a
// node only when a graph is being built (create_graph=True), and that node's backward raises
// (torchvision's *BackwardFunction pattern) instead of returning a silent zero.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace gradalign_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_op(const at::Tensor& a,
                                                         const at::Tensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gradalign_fast::cosine", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&)>();
  return op.call(a, b);
}

at::Tensor cosine_backward_op(const at::Tensor& grad_cos, const at::Tensor& a,
                              const at::Tensor& b, const at::Tensor& cos,
                              const at::Tensor& norm_a, const at::Tensor& norm_b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gradalign_fast::cosine_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  return op.call(grad_cos, a, b, cos, norm_a, norm_b);
}

class CosineFunction : public torch::autograd::Function<CosineFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [cos, norm_a, norm_b] = cosine_op(a, b);
    ctx->mark_non_differentiable({norm_a, norm_b});
    ctx->save_for_backward({a, b, cos, norm_a, norm_b});
    return {cos, norm_a, norm_b};
  }

  // grads: {grad_cos, (undefined) grads of the norms}; returns {grad_a, grad_b}, undefined
  // for an input that needs none (GradAlign's a, the clean gradient, is detached).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &a = saved[0], &b = saved[1], &cos = saved[2];
    const at::Tensor &norm_a = saved[3], &norm_b = saved[4];
    at::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) grad_a = cosine_backward_op(grads[0], a, b, cos, norm_a, norm_b);
    if (ctx->needs_input_grad(1)) grad_b = cosine_backward_op(grads[0], b, a, cos, norm_b, norm_a);
    return {grad_a, grad_b};
  }
};

class CosineBackwardFunction : public torch::autograd::Function<CosineBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const at::Tensor& grad_cos,
                               const at::Tensor& a, const at::Tensor& b, const at::Tensor& cos,
                               const at::Tensor& norm_a, const at::Tensor& norm_b) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return {cosine_backward_op(grad_cos, a, b, cos, norm_a, norm_b)};
  }

  static variable_list backward(AutogradContext* /*ctx*/, variable_list /*grads*/) {
    TORCH_CHECK(false,
                "gradalign_fast::cosine_backward is not differentiable: a second backward "
                "through gradalign_fast.ops.cosine (create_graph=True through its backward) "
                "is not supported");
    return {};
  }
};

at::Tensor cosine_backward_autograd(const at::Tensor& grad_cos, const at::Tensor& a,
                                    const at::Tensor& b, const at::Tensor& cos,
                                    const at::Tensor& norm_a, const at::Tensor& norm_b) {
  return CosineBackwardFunction::apply(grad_cos, a, b, cos, norm_a, norm_b)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_autograd(const at::Tensor& a,
                                                               const at::Tensor& b) {
  auto out = CosineFunction::apply(a, b);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gradalign_fast, Autograd, m) {
  m.impl("cosine", &cosine_autograd);
  m.impl("cosine_backward", &cosine_backward_autograd);
}

}  // namespace gradalign_fast
