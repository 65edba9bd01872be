// Host entry points of the CUDA kernels, one block per op. registration.cpp binds them to the
// TORCH_LIBRARY schemas; nothing else calls them.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

namespace unimixer {

// rms_norm.cu: y = x * rsqrt(mean(x^2) + eps) * w over the last dim; rstd is fp32 [...].
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x, const at::Tensor& weight, double eps);

// s = x + residual (input dtype), y = RMSNorm(s); returns (y, s, rstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps);

// Gradients of y (and, if given, of the sum output) w.r.t. the normalised input s and w.
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(
    const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& s,
    const at::Tensor& weight, const at::Tensor& rstd);

// sinkhorn.cu: Sinkhorn of dense logits [..., n, n], n <= 1024 (symmetric ones up to n = 5120 through
// sinkhorn_paired.cu): (P, U, V), fp32, U and V [..., iters, n];
// and the gradient of the unrolled map with respect to the logits (their dtype).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd(const at::Tensor& logits, double tau, int64_t iters,
                                                            bool symmetric);
at::Tensor sinkhorn_bwd(const at::Tensor& dp, const at::Tensor& logits, const at::Tensor& u, const at::Tensor& v,
                        double tau, int64_t iters, bool symmetric);
// The same gradient written over the logits (whose buffer it reuses): in place for contiguous symmetric
// logits of n > 1024 (the paired kernels), through a temporary otherwise.
void sinkhorn_bwd_(const at::Tensor& dp, const at::Tensor& logits, const at::Tensor& u, const at::Tensor& v,
                   double tau, int64_t iters, bool symmetric);
// The tiles the forward and backward would take for these logits (0 128x64, 1 64x128, 2 128x128), -1
// where none fits the device at once. Raises nothing but for a bad UNIMIXER_SINKHORN_CUDA_TILE.
std::vector<int64_t> sinkhorn_plan(const at::Tensor& logits, bool symmetric);

// pswiglu.cu: the per-token SwiGLU's forward on tensor cores, u [bs, T, D], w_gate and w_up [T, D, h],
// w_down [T, h, D], optional biases [T, h] / [T, D], all of one 16-bit dtype, D <= 128 and D, h multiples of
// 8: (o [bs, T, D], g, v), where g and v are the pre-activations [T, bs, h] with their biases when `save`,
// else empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pswiglu_fwd(
    const at::Tensor& u, const at::Tensor& w_gate, const at::Tensor& w_up, const at::Tensor& w_down,
    const std::optional<at::Tensor>& b_gate, const std::optional<at::Tensor>& b_up,
    const std::optional<at::Tensor>& b_down, bool save);

}  // namespace unimixer
