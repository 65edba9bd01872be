// Pieces shared by the CUDA kernels: packed vector loads, row reductions, output allocation and
// launch sizing. Header-only; every op file includes it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace unimixer {

constexpr int kWarpSize = 32;

// N consecutive elements moved as one aligned load or store (16 bytes for the activations).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_as_float(const T* p, float (&out)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = static_cast<float>(pack.v[k]);
}

template <typename T, int N>
__device__ __forceinline__ void store_from_float(T* p, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int k = 0; k < N; ++k) pack.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// N consecutive elements as floats in aligned loads of at most 16 bytes each (p aligned to
// min(N * sizeof(T), 16) bytes), and the same for stores.
template <typename T, int N>
constexpr int kRunChunk = N * static_cast<int>(sizeof(T)) > 16 ? 16 / static_cast<int>(sizeof(T)) : N;

template <typename T, int N>
__device__ __forceinline__ void load_run(const T* p, float (&out)[N]) {
  constexpr int V = kRunChunk<T, N>;
  static_assert(N % V == 0, "a run is whole chunks");
#pragma unroll
  for (int k = 0; k < N; k += V) {
    float part[V];
    load_as_float<T, V>(p + k, part);
#pragma unroll
    for (int e = 0; e < V; ++e) out[k + e] = part[e];
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_run(T* p, const float (&in)[N]) {
  constexpr int V = kRunChunk<T, N>;
  static_assert(N % V == 0, "a run is whole chunks");
#pragma unroll
  for (int k = 0; k < N; k += V) {
    float part[V];
#pragma unroll
    for (int e = 0; e < V; ++e) part[e] = in[k + e];
    store_from_float<T, V>(p + k, part);
  }
}

// Sum over aligned groups of `width` lanes (a power of two up to 32); every lane gets its sum.
__device__ __forceinline__ float warp_sum(float v, int width = kWarpSize) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    if (offset < width) v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over the blockDim.x threads that share threadIdx.y (one row). blockDim.x is a power of two;
// a row narrower than a warp is an aligned group of lanes, a wider one spans whole warps (at most
// 32), so `scratch` needs 32 floats per row. Every thread of the block must call it: a row wider
// than a warp synchronises the block.
__device__ __forceinline__ float row_sum(float v, float* scratch) {
  if (blockDim.x <= kWarpSize) return warp_sum(v, blockDim.x);
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  float* row_scratch = scratch + threadIdx.y * kWarpSize;
  __syncthreads();  // readers of the previous call are done with the scratch
  if (lane == 0) row_scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarpSize) ? row_scratch[lane] : 0.f;
  return warp_sum(v);
}

// Kernel outputs. With UNIMIXER_POISON_OUTPUTS=1 (set by the tests) they start as NaN, so an
// element a kernel forgets to write fails every check.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const char* poison = std::getenv("UNIMIXER_POISON_OUTPUTS");
  if (poison != nullptr && std::strcmp(poison, "1") == 0) {
    return at::full(sizes, std::numeric_limits<float>::quiet_NaN(), options);
  }
  return at::empty(sizes, options);
}

// `t [..., D]` as `[M, D]` with unit stride along D: a view when the strides allow (any row
// stride, including 0 from `expand`), otherwise one copy.
inline at::Tensor rows_2d(const at::Tensor& t) {
  const int64_t d = t.size(-1);
  at::Tensor u = (t.stride(-1) == 1 || d == 1) ? t : t.contiguous();
  at::Tensor v = u.reshape({-1, d});
  if (d > 1 && v.stride(1) != 1) v = v.contiguous();
  return v;
}

inline bool is_aligned(const void* p, int bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(bytes) == 0;
}

inline int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(T{}) for the activation dtypes the kernels support.
template <typename F>
inline void with_dtype(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default:
      TORCH_CHECK_TYPE(false, what, ": the cuda backend supports float32, float16 and bfloat16, got ", dtype);
  }
}

// `t` is a CUDA tensor on `like`'s device.
inline void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == like.device(), name, ": expected device ", like.device(), ", got ", t.device());
}

}  // namespace unimixer
