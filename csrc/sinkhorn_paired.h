// The `cuda` backend's Sinkhorn for symmetric logits larger than one thread-block cluster holds
// (sinkhorn_paired.cu). sinkhorn.cu's entry points call these for n > 1024; nothing else does.
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace unimixer {
namespace paired {

// The largest n the paired kernels take (80 bands of 64: a block reduces a row's partials in one pass).
constexpr int kMaxN = 5120;

// x: [n_mat, n, n] logits (any strides). Returns (P, U, V) as sinkhorn_fwd.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& x, double tau, int64_t iters);

// d: [n_mat, n, n] fp32 gradient of P; u, v: [n_mat, iters, n] contiguous. Writes dlogits into dx, a
// contiguous [n_mat, n, n] tensor of x's dtype, which may be x itself (contiguous): a unit reads the two
// blocks of x it owns, (I, J) and (J, I), before anything else, and writes dx only there, at the end.
void backward(const at::Tensor& d, const at::Tensor& x, const at::Tensor& u, const at::Tensor& v, double tau,
              int64_t iters, const at::Tensor& dx);

}  // namespace paired
}  // namespace unimixer
