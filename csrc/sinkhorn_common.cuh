// Device pieces shared by the two Sinkhorn paths of the `cuda` backend: sinkhorn.cu (n <= 1024, a row
// band per thread-block cluster) and sinkhorn_paired.cu (larger symmetric logits, mirrored tiles kept
// once). Exponentials and logarithms as the MUFU instructions, the tagged words through which blocks
// exchange partial sums, and the warp's halving row reduction.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace unimixer {
namespace sk {

constexpr long long kMaxSpins = 1ll << 24;   // polls (~1 us each) before a wait counts a failure

// Products by kLog2e that feed a subtraction are rounded (__fmul_rn): contracted into an FMA at some uses
// and not others, a value such as T1 would be two slightly different numbers
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFull = 0xffffffffu;

using Word = unsigned long long;

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ex2 with results below 2^-126 flushed to zero: one MUFU.EX2, where `ex2` adds a compare and two
// multiplies to keep subnormal results. For the log-sum-exp sums, which hold a term of 1, and the
// backward's iterates (an entry below 2^-126 moves a gradient by less than 1e-35).
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// log-sum-exp from a maximum and a sum of exponentials shifted by it, as the Triton `_lse`: an
// all -inf slice gives 0, not NaN
__device__ __forceinline__ float lse_finish(float m, float s) { return m + lg2(s == 0.f ? 1.f : s) * kLn2; }
__device__ __forceinline__ float lse_shift(float m) { return m == -INFINITY ? 0.f : m; }

__device__ __forceinline__ Word tagged(float v, int tag) {
  return (static_cast<Word>(static_cast<unsigned>(tag)) << 32) | __float_as_uint(v);
}

__device__ __forceinline__ void store_word(Word* p, Word w) {
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(w) : "memory");
}

__device__ __forceinline__ Word load_word(const Word* p) {
  Word w;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
  return w;
}

// A flag over data written before it: the block's stores, __syncthreads, then one thread's release
// store; the waiter's acquire load, then __syncthreads before the block reads the data.
__device__ __forceinline__ void store_word_release(Word* p, Word w) {
  asm volatile("st.release.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(w) : "memory");
}

__device__ __forceinline__ Word load_word_acquire(const Word* p) {
  Word w;
  asm volatile("ld.acquire.gpu.global.b64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
  return w;
}

__device__ __forceinline__ bool has_tag(Word w, int tag) { return static_cast<int>(w >> 32) == tag; }

// `w`, the word at `p` as read, until it carries `tag`: read again with LOAD (load_word or
// load_word_acquire) at most kMaxSpins times; a wait that gives up counts a failure in `fail`.
template <Word (*LOAD)(const Word*)>
__device__ __forceinline__ Word wait_tag(const Word* p, int tag, Word w, Word* fail) {
  for (long long spins = 0; !has_tag(w, tag) && spins < kMaxSpins; ++spins) w = LOAD(p);
  if (!has_tag(w, tag)) atomicAdd(fail, 1ull);
  return w;
}

__device__ __forceinline__ float combine(bool max, float a, float b) { return max ? fmaxf(a, b) : a + b; }

// One halving step of warp_row_reduce and the ones after it: lanes with `MASK` set keep the upper HALF
// of w[0 .. 2 HALF) and combine their partner's into it, the others the lower half.
template <bool MAX, int HALF, int MASK, int N>
__device__ __forceinline__ void halve_rows(float (&w)[N], int lane) {
  if constexpr (HALF >= 1) {
    const bool upper = lane & MASK;
#pragma unroll
    for (int k = 0; k < HALF; ++k) {
      const float send = upper ? w[k] : w[k + HALF];
      w[k] = combine(MAX, upper ? w[k + HALF] : w[k], __shfl_xor_sync(kFull, send, MASK));
    }
    halve_rows<MAX, HALF / 2, MASK / 2>(w, lane);
  }
}

// Which accesses take vector loads and stores, a kernel argument the host sets from the tensors'
// layouts (otherwise one element at a time, through any strides).
constexpr int kVecLogits = 1;  // logits: unit column stride, rows and matrices 16-byte aligned
constexpr int kVecGrad = 2;    // dp: the same
constexpr int kVecOut = 4;     // n % 4 == 0: the rows of P, G and dM (fresh, contiguous)

// --- host: what both paths' launchers share -----------------------------------------------------

// UNIMIXER_SINKHORN_CHECK=1: after each launch, synchronise and raise if a wait gave up (tests).
inline bool check_waits() {
  const char* env = std::getenv("UNIMIXER_SINKHORN_CHECK");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

// With check_waits(): raise if the failure counts `fail` (a wait that gave up adds one) are not all 0.
inline void check_failures(const at::Tensor& fail, const char* who) {
  if (!check_waits()) return;
  const int64_t failed = fail.sum().item<int64_t>();
  TORCH_CHECK(failed == 0, who, ": ", failed, " waits for partials timed out (blocks not co-resident)");
}

// The kVec* bits for these tensors ([n_mat, n, n] views): vector access where the rows are contiguous
// and every run a thread reads is 16-byte aligned.
inline bool rows_aligned(const at::Tensor& t) {
  const int64_t bytes = static_cast<int64_t>(t.element_size());
  return t.stride(2) == 1 && (t.stride(1) * bytes) % 16 == 0 && (t.size(0) == 1 || (t.stride(0) * bytes) % 16 == 0) &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}
inline int vec_bits(const at::Tensor& x, const at::Tensor* dp) {
  return (rows_aligned(x) ? kVecLogits : 0) | (dp != nullptr && rows_aligned(*dp) ? kVecGrad : 0) |
         (x.size(-1) % 4 == 0 ? kVecOut : 0);
}

}  // namespace sk
}  // namespace unimixer
