// RMSNorm and add + RMSNorm, forward and backward (the `cuda` backend of rms_norm / add_rms_norm).
//
// Forward, per row i of [M, D]:
//   s_i    = x_i + r_i                    (add_rms_norm only; rounded to the input dtype, stored)
//   rstd_i = rsqrt(mean(s_i^2) + eps)     (fp32, saved for backward: 4 bytes per row)
//   y_i    = (s_i * rstd_i) * w
// Backward, with g_i = dy_i * w and xhat_i = s_i * rstd_i:
//   ds_i = rstd_i * (g_i - xhat_i * mean(g_i * xhat_i))  (+ dsum_i, the gradient of the sum output)
//   dw   = sum_i dy_i * xhat_i
//
// Layout: a row is held in registers by blockDim.x threads (one warp for narrow rows, up to 512
// threads for wide ones; D <= 16384); blockDim.y rows share a block. Thread t of a row owns the chunks
// c = k * blockDim.x + t (k < ITEMS) of VEC consecutive columns, so every load is coalesced and,
// when pointers and row strides allow, a 16-byte vector. Statistics are fp32 whatever the dtype;
// w is read as fp32.
//
// dw is deterministic: each thread of the persistent backward grid accumulates its rows in
// registers, each block folds its rows in a fixed order and writes one fp32 partial row, and a
// second kernel sums the partials in a fixed order. No atomics.

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include <ATen/ATen.h>

#include "common.cuh"
#include "ops.h"

namespace unimixer {
namespace {

// A thread holds at most kMaxPerThread elements of a row (ITEMS * VEC), and a row at most
// kMaxThreadsPerRow threads: rows up to 16384 wide. 512-thread blocks leave the compiler 128
// registers per thread, enough for the backward's four row fragments without spilling.
constexpr int kMaxPerThread = 32;
constexpr int kMaxThreadsPerRow = 512;
constexpr int kThreadsPerBlock = 256;
constexpr int kMaxRowWidth = kMaxPerThread * kMaxThreadsPerRow;

template <typename T, int VEC, int ITEMS, bool RESIDUAL>
__global__ void __launch_bounds__(kMaxThreadsPerRow) rms_norm_fwd_kernel(
    const T* __restrict__ x, const T* __restrict__ r, const float* __restrict__ w, T* __restrict__ y,
    T* __restrict__ s, float* __restrict__ rstd_out, int64_t rows, int d, int64_t stride_x,
    int64_t stride_r, float eps) {
  __shared__ float scratch[kThreadsPerBlock / kWarpSize * kWarpSize];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  float v[ITEMS][VEC];
  float sum_sq = 0.f;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int col = (k * blockDim.x + threadIdx.x) * VEC;
    if (active && col < d) {
      load_as_float<T, VEC>(x + row * stride_x + col, v[k]);
      if constexpr (RESIDUAL) {
        float rv[VEC];
        load_as_float<T, VEC>(r + row * stride_r + col, rv);
        // round the sum to the storage dtype first, so forward and backward see the same value
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[k][j] = static_cast<float>(static_cast<T>(v[k][j] + rv[j]));
        store_from_float<T, VEC>(s + row * d + col, v[k]);
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum_sq += v[k][j] * v[k][j];
    }
  }
  sum_sq = row_sum(sum_sq, scratch);
  const float rstd = rsqrtf(sum_sq / static_cast<float>(d) + eps);
  if (!active) return;
  if (threadIdx.x == 0) rstd_out[row] = rstd;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int col = (k * blockDim.x + threadIdx.x) * VEC;
    if (col < d) {
      float wv[VEC];
      load_as_float<float, VEC>(w + col, wv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[k][j] = v[k][j] * rstd * wv[j];
      store_from_float<T, VEC>(y + row * d + col, v[k]);
    }
  }
}

template <typename T, int VEC, int ITEMS, bool DSUM>
__global__ void __launch_bounds__(kMaxThreadsPerRow) rms_norm_bwd_kernel(
    const T* __restrict__ dy, const T* __restrict__ dsum, const T* __restrict__ s,
    const float* __restrict__ w, const float* __restrict__ rstd, T* __restrict__ ds,
    float* __restrict__ dw_partial, int64_t rows, int d, int64_t stride_dy, int64_t stride_dsum,
    int64_t stride_s) {
  __shared__ float scratch[kThreadsPerBlock / kWarpSize * kWarpSize];
  // w stays in registers unless the row fragment is large; then it is re-read (L1) every row,
  // so the four fragments of the widest rows do not spill
  constexpr bool kWeightInRegisters = ITEMS * VEC <= kMaxPerThread / 2;
  float wv[kWeightInRegisters ? ITEMS : 1][VEC];
  float dw[ITEMS][VEC];
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int col = (k * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) dw[k][j] = 0.f;
    if constexpr (kWeightInRegisters) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) wv[k][j] = 0.f;
      if (col < d) load_as_float<float, VEC>(w + col, wv[k]);
    }
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  // the loop bound is the same for the whole block, so row_sum's barriers line up
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y; first < rows; first += step) {
    const int64_t row = first + threadIdx.y;
    const bool active = row < rows;
    const float r = active ? rstd[row] : 0.f;
    float xhat[ITEMS][VEC];
    float g[ITEMS][VEC];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int col = (k * blockDim.x + threadIdx.x) * VEC;
      float dyv[VEC];
      float wk[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xhat[k][j] = 0.f;
        dyv[j] = 0.f;
        wk[j] = 0.f;
      }
      if (active && col < d) {
        load_as_float<T, VEC>(s + row * stride_s + col, xhat[k]);
        load_as_float<T, VEC>(dy + row * stride_dy + col, dyv);
        if constexpr (kWeightInRegisters) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) wk[j] = wv[k][j];
        } else {
          load_as_float<float, VEC>(w + col, wk);
        }
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xhat[k][j] *= r;
        g[k][j] = dyv[j] * wk[j];
        dot += g[k][j] * xhat[k][j];
        dw[k][j] += dyv[j] * xhat[k][j];
      }
    }
    const float mean_dot = row_sum(dot, scratch) / static_cast<float>(d);
    if (!active) continue;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int col = (k * blockDim.x + threadIdx.x) * VEC;
      if (col < d) {
        float out[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = r * (g[k][j] - xhat[k][j] * mean_dot);
        if constexpr (DSUM) {
          float dsv[VEC];
          load_as_float<T, VEC>(dsum + row * stride_dsum + col, dsv);
#pragma unroll
          for (int j = 0; j < VEC; ++j) out[j] += dsv[j];
        }
        store_from_float<T, VEC>(ds + row * d + col, out);
      }
    }
  }
  // Fold the block's rows into threadIdx.y == 0, one element at a time through a tree over y
  // (blockDim.y is a power of two): a fixed order, so the partial is the same bits every run.
  if (blockDim.y > 1) {
    __shared__ float fold[kThreadsPerBlock];
    const int at = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        fold[at] = dw[k][j];
        __syncthreads();
        for (int half = blockDim.y / 2; half > 0; half >>= 1) {
          if (static_cast<int>(threadIdx.y) < half) fold[at] += fold[at + half * blockDim.x];
          __syncthreads();
        }
        dw[k][j] = fold[threadIdx.x];
        __syncthreads();
      }
    }
  }
  if (threadIdx.y != 0) return;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int col = (k * blockDim.x + threadIdx.x) * VEC;
    if (col < d) store_from_float<float, VEC>(dw_partial + static_cast<int64_t>(blockIdx.x) * d + col, dw[k]);
  }
}

// out[c] = sum_p partial[p, c] in a fixed order: a 32 x 32 block strides over p, then a tree over
// threadIdx.y. Same inputs, same bits.
__global__ void __launch_bounds__(1024) column_sum_kernel(
    const float* __restrict__ partial, int64_t parts, int d, float* __restrict__ out) {
  __shared__ float tile[kWarpSize][kWarpSize + 1];
  const int col = blockIdx.x * kWarpSize + threadIdx.x;
  float acc = 0.f;
  if (col < d) {
    for (int64_t p = threadIdx.y; p < parts; p += kWarpSize) acc += partial[p * d + col];
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
#pragma unroll
  for (int half = kWarpSize / 2; half > 0; half >>= 1) {
    if (static_cast<int>(threadIdx.y) < half) tile[threadIdx.y][threadIdx.x] += tile[threadIdx.y + half][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && col < d) out[col] = tile[0][threadIdx.x];
}

// --- launch configuration ----------------------------------------------------------------------

struct RowLayout {
  int vec;          // elements per chunk (16 bytes when aligned, else 1)
  int items;        // chunks per thread: a power of two, items * vec <= kMaxPerThread
  int threads_row;  // blockDim.x
  int rows_block;   // blockDim.y
};

// Narrow rows: the fewest lanes (a power of two up to a warp) with one chunk each, several rows
// per block. Wider rows: more threads per row (up to 4 chunks each) until kMaxThreadsPerRow, then
// more chunks per thread.
RowLayout choose_layout(int64_t d, int vec) {
  TORCH_CHECK(d <= kMaxRowWidth, "rms_norm (cuda backend): the last dim D=", d, " is wider than the ",
              kMaxRowWidth, " this kernel holds in registers; use backend='triton' or 'reference'");
  const int64_t chunks = ceil_div(d, vec);
  int threads_row = 1;
  while (threads_row < kWarpSize && threads_row < chunks) threads_row *= 2;
  while (threads_row < kMaxThreadsPerRow && static_cast<int64_t>(threads_row) * 4 < chunks) threads_row *= 2;
  int items = 1;
  while (static_cast<int64_t>(items) * threads_row < chunks) items *= 2;
  const int rows_block = std::max(1, kThreadsPerBlock / threads_row);
  return {vec, items, threads_row, rows_block};
}

// 16-byte vectors when D, every row stride and every base pointer allow them.
template <typename T>
int choose_vec(int64_t d, std::initializer_list<std::pair<const void*, int64_t>> rows, const float* w) {
  constexpr int kVec = 16 / sizeof(T);
  if (d % kVec != 0 || !is_aligned(w, kVec * sizeof(float))) return 1;
  for (const auto& [ptr, stride] : rows) {
    if (ptr != nullptr && (!is_aligned(ptr, 16) || stride % kVec != 0)) return 1;
  }
  return kVec;
}

// Calls f(std::integral_constant<int, VEC>, std::integral_constant<int, ITEMS>); only the
// (VEC, ITEMS) pairs within kMaxPerThread are instantiated.
template <int V, int I, typename F>
void call_within_budget(F&& f) {
  if constexpr (V * I <= kMaxPerThread) {
    f(std::integral_constant<int, V>{}, std::integral_constant<int, I>{});
  } else {
    TORCH_CHECK(false, "rms_norm (cuda backend): ", I, " chunks of ", V, " per thread exceed the register budget");
  }
}

template <int V, typename F>
void with_items(int items, F&& f) {
  switch (items) {
    case 1: call_within_budget<V, 1>(f); break;
    case 2: call_within_budget<V, 2>(f); break;
    case 4: call_within_budget<V, 4>(f); break;
    case 8: call_within_budget<V, 8>(f); break;
    case 16: call_within_budget<V, 16>(f); break;
    case 32: call_within_budget<V, 32>(f); break;
    default: TORCH_CHECK(false, "rms_norm (cuda backend): unexpected chunks per thread ", items);
  }
}

template <typename T, typename F>
void with_layout(const RowLayout& layout, F&& f) {
  if (layout.vec == 1) {
    with_items<1>(layout.items, f);
  } else {
    with_items<16 / sizeof(T)>(layout.items, f);
  }
}


std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight, double eps) {
  check_cuda(x, "x", x);
  check_cuda(weight, "weight", x);
  TORCH_CHECK(x.dim() >= 1, "x: expected at least 1 dimension, got ", x.sizes());
  const int64_t d = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == d, "weight: expected shape (", d, ",), got ", weight.sizes());
  if (residual) {
    check_cuda(*residual, "residual", x);
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual: expected shape ", x.sizes(), ", got ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == x.scalar_type(), "residual: expected dtype ", x.scalar_type(),
                     ", got ", residual->scalar_type());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = rows_2d(x);
  const at::Tensor r2 = residual ? rows_2d(*residual) : at::Tensor();
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t rows = x2.size(0);
  at::Tensor y = new_output({rows, d}, x.options());
  at::Tensor s = residual ? new_output({rows, d}, x.options()) : at::Tensor();
  at::Tensor rstd = new_output({rows}, x.options().dtype(at::kFloat));
  if (rows > 0 && d > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    with_dtype(x.scalar_type(), "x", [&](auto tag) {
      using T = decltype(tag);
      const int vec = choose_vec<T>(
          d, {{x2.data_ptr(), x2.stride(0)}, {residual ? r2.data_ptr() : nullptr, residual ? r2.stride(0) : 0}},
          w.data_ptr<float>());
      const RowLayout layout = choose_layout(d, vec);
      const dim3 block(layout.threads_row, layout.rows_block);
      const dim3 grid(static_cast<unsigned>(ceil_div(rows, layout.rows_block)));
      with_layout<T>(layout, [&](auto vec_c, auto items_c) {
        constexpr int V = decltype(vec_c)::value;
        constexpr int I = decltype(items_c)::value;
        const T* xp = static_cast<const T*>(x2.data_ptr());
        T* yp = static_cast<T*>(y.data_ptr());
        float* rp = rstd.data_ptr<float>();
        if (residual) {
          rms_norm_fwd_kernel<T, V, I, true><<<grid, block, 0, stream>>>(
              xp, static_cast<const T*>(r2.data_ptr()), w.data_ptr<float>(), yp, static_cast<T*>(s.data_ptr()), rp,
              rows, static_cast<int>(d), x2.stride(0), r2.stride(0), static_cast<float>(eps));
        } else {
          rms_norm_fwd_kernel<T, V, I, false><<<grid, block, 0, stream>>>(
              xp, nullptr, w.data_ptr<float>(), yp, nullptr, rp, rows, static_cast<int>(d), x2.stride(0), 0,
              static_cast<float>(eps));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  } else if (rows > 0) {
    rstd.fill_(1.0 / std::sqrt(eps));  // D = 0: the mean of no squares taken as 0
  }
  const auto lead = x.sizes().slice(0, x.dim() - 1);
  return {y.view(x.sizes()), residual ? s.view(x.sizes()) : s, rstd.view(lead)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto [y, s, rstd] = forward(x, std::nullopt, weight, eps);
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps) {
  return forward(x, residual, weight, eps);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(
    const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& s, const at::Tensor& weight,
    const at::Tensor& rstd) {
  check_cuda(s, "s", s);
  check_cuda(dy, "dy", s);
  check_cuda(weight, "weight", s);
  check_cuda(rstd, "rstd", s);
  TORCH_CHECK(s.dim() >= 1, "s: expected at least 1 dimension, got ", s.sizes());
  const int64_t d = s.size(-1);
  TORCH_CHECK(dy.sizes() == s.sizes(), "dy: expected shape ", s.sizes(), ", got ", dy.sizes());
  TORCH_CHECK_TYPE(dy.scalar_type() == s.scalar_type(), "dy: expected dtype ", s.scalar_type(), ", got ",
                   dy.scalar_type());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == d, "weight: expected shape (", d, ",), got ", weight.sizes());
  TORCH_CHECK_TYPE(rstd.scalar_type() == at::kFloat, "rstd: expected float32, got ", rstd.scalar_type());
  TORCH_CHECK(rstd.numel() * d == s.numel(), "rstd: expected ", s.numel() / std::max<int64_t>(d, 1),
              " elements (one per row of s), got ", rstd.numel());
  if (dsum) {
    check_cuda(*dsum, "dsum", s);
    TORCH_CHECK(dsum->sizes() == s.sizes(), "dsum: expected shape ", s.sizes(), ", got ", dsum->sizes());
    TORCH_CHECK_TYPE(dsum->scalar_type() == s.scalar_type(), "dsum: expected dtype ", s.scalar_type(), ", got ",
                     dsum->scalar_type());
  }
  const c10::cuda::CUDAGuard guard(s.device());
  const at::Tensor s2 = rows_2d(s);
  const at::Tensor dy2 = rows_2d(dy);
  const at::Tensor dsum2 = dsum ? rows_2d(*dsum) : at::Tensor();
  const at::Tensor r = rstd.reshape({-1}).contiguous();
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t rows = s2.size(0);
  at::Tensor ds = new_output({rows, d}, s.options());
  at::Tensor dw = at::zeros({d}, weight.options().dtype(at::kFloat));
  if (rows > 0 && d > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor partial;
    with_dtype(s.scalar_type(), "s", [&](auto tag) {
      using T = decltype(tag);
      const int vec = choose_vec<T>(d,
                                    {{s2.data_ptr(), s2.stride(0)},
                                     {dy2.data_ptr(), dy2.stride(0)},
                                     {dsum ? dsum2.data_ptr() : nullptr, dsum ? dsum2.stride(0) : 0}},
                                    w.data_ptr<float>());
      const RowLayout layout = choose_layout(d, vec);
      const dim3 block(layout.threads_row, layout.rows_block);
      with_layout<T>(layout, [&](auto vec_c, auto items_c) {
        constexpr int V = decltype(vec_c)::value;
        constexpr int I = decltype(items_c)::value;
        auto launch = [&](auto kernel, const T* dsum_ptr, int64_t dsum_stride) {
          int per_sm = 0;
          C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &per_sm, kernel, static_cast<int>(block.x * block.y), 0));
          const int64_t wanted = ceil_div(rows, layout.rows_block);
          const int64_t persistent = static_cast<int64_t>(std::max(per_sm, 1)) * sm_count(s.get_device());
          const dim3 grid(static_cast<unsigned>(std::min(wanted, persistent)));
          partial = new_output({static_cast<int64_t>(grid.x), d}, s.options().dtype(at::kFloat));
          kernel<<<grid, block, 0, stream>>>(
              static_cast<const T*>(dy2.data_ptr()), dsum_ptr, static_cast<const T*>(s2.data_ptr()),
              w.data_ptr<float>(), r.data_ptr<float>(), static_cast<T*>(ds.data_ptr()), partial.data_ptr<float>(),
              rows, static_cast<int>(d), dy2.stride(0), dsum_stride, s2.stride(0));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (dsum) {
          launch(rms_norm_bwd_kernel<T, V, I, true>, static_cast<const T*>(dsum2.data_ptr()), dsum2.stride(0));
        } else {
          launch(rms_norm_bwd_kernel<T, V, I, false>, nullptr, 0);
        }
      });
    });
    const dim3 block(kWarpSize, kWarpSize);
    const dim3 grid(static_cast<unsigned>(ceil_div(d, kWarpSize)));
    column_sum_kernel<<<grid, block, 0, stream>>>(partial.data_ptr<float>(), partial.size(0), static_cast<int>(d),
                                                  dw.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (rows > 0) {
    ds.zero_();
  }
  return {ds.view(s.sizes()), dw.to(weight.scalar_type())};
}

}  // namespace unimixer
