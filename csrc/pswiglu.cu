// The per-token SwiGLU's forward, o_t = W_down[t] (SiLU(W_gate[t] u_t + b_g) * (W_up[t] u_t + b_u)) + b_d
// for each token t (SPEC §4), on warp-level tensor-core instructions (mma.sync m16n8k16, sm_80 and
// later). One block of four warps takes one token and 64 samples; each warp owns 16 of them:
//
//   - the block's u rows ([64, D]) come into shared memory once, and each warp keeps its 16 rows as
//     A fragments in registers for the whole hidden loop;
//   - the hidden dimension is walked in chunks of CH = 16 units (32 with UNIMIXER_PSWIGLU_CUDA_CHUNK=32): the
//     chunk's gate and up columns ([D, CH] each) and down rows ([CH, D]) stream through a three-stage
//     cp.async pipeline, so the next chunks' weights load while this one's products run;
//   - a chunk's gate and up products land in registers as CH / 8 accumulator tiles of 16 x 8 each, and
//     SiLU(g) * v, rounded to the compute dtype, is already the A fragment of the down product (the
//     accumulator layout of m16n8 is the operand layout of k16): the hidden activation never leaves
//     the registers;
//   - the [16, D] output rows accumulate in fp32 across the chunks and are stored once, with b_d.
//
// The rounding is the Triton kernel's (triton_kernels/pswiglu.py): fp32 products and biases, the
// activation rounded to the compute dtype before the down product, the output rounded once.
// Constraints (checked on the host): u, weights and biases of one 16-bit dtype, D <= 128 and D and h
// multiples of 8 (16-byte vectors), T <= 65535. Shared-memory rows are padded by 8 elements, which makes
// every ldmatrix of eight rows conflict-free.
//
// Measured (bench/results run267-268, H100, paper-small): 85.5 µs alone at CH = 16, 1.9x the Triton
// forward's time through the op, latency-bound on its accumulator chains (bench/NOTES.md).
//
// A second kernel, pswiglu_fwd_wgmma_kernel below, does the same work with Hopper's warpgroup
// instructions (csrc/wgmma.cuh): UNIMIXER_PSWIGLU_CUDA_MMA=wgmma picks it, where the extension was built
// for sm_90a (the default). Its operands are read by the tensor cores from shared memory, not through
// ldmatrix into registers, and one instruction a k-step forms a chunk's gate and up products together.
// Where D <= 32, ptxas serialises its wgmma instructions (warning C7515): correct, not tuned. Measured
// (bench/results run269, H200, paper-small, before a724b8d): 85.0 µs alone, level with the mma.sync kernel.

#include <mutex>
#include <set>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "ops.h"
#include "wgmma.cuh"

namespace unimixer {
namespace {

constexpr int kRows = 64;    // samples a block
constexpr int kWarps = 4;    // 16 samples a warp
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kStages = 3;   // cp.async pipeline depth
constexpr int kPad = 8;      // elements appended to each shared-memory row
constexpr int kMaxD = 128;

template <typename T>
struct Dtype;

template <>
struct Dtype<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

template <>
struct Dtype<__half> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without passing through registers; `ok == false` writes zeros (src-size 0,
// nothing is read from `src`).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(ok ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8 x 8 tiles of 16-bit elements; lane l gives the address of row l % 8 of tile l / 8. Plain: the
// A operand of m16n8k16 from row-major [rows, k]; transposed: two B operands (n 0-7, n 8-15) from
// row-major [k, n].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// The element lane `lane` addresses in a 16 x 16 operand at (r0, c0) of a row-major tile with row
// stride `stride`, for ldmatrix_x4 (rows 0-7 / 8-15 of columns 0-7, then of columns 8-15).
__device__ __forceinline__ int frag_offset(int lane, int r0, int c0, int stride) {
  return (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + c0 + (lane >> 4) * 8;
}

template <int BD, int CH>
constexpr int smem_elems() {
  return kRows * (BD + kPad) + kStages * (2 * BD * (CH + kPad) + CH * (BD + kPad));
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

// CH: hidden units a pipeline step (16 or 32). A warp's gate and up products of a step are CH / 4 independent
// accumulator chains over D / 16 k-steps: 32 doubles them (run268 found 16's four chains latency-bound) at
// the cost of 16 registers and two blocks an SM instead of three.
template <typename T, int BD, int CH>
__global__ void __launch_bounds__(kThreads, CH == 16 ? 3 : 2) pswiglu_fwd_kernel(
    const T* __restrict__ u, int64_t stride_us, int64_t stride_ut, const T* __restrict__ w_gate,
    const T* __restrict__ w_up, const T* __restrict__ w_down, const T* __restrict__ b_gate,
    const T* __restrict__ b_up, const T* __restrict__ b_down, T* __restrict__ out, T* __restrict__ g_out,
    T* __restrict__ v_out, int bs, int tokens, int d, int h) {
  using Ops = Dtype<T>;
  constexpr int kUStride = BD + kPad;      // u rows [64, BD]
  constexpr int kWStride = CH + kPad;      // gate / up chunk [BD, CH]
  constexpr int kDStride = BD + kPad;      // down chunk [CH, BD]
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* us = reinterpret_cast<T*>(smem_raw);
  T* gate_s = us + kRows * kUStride;
  T* up_s = gate_s + kStages * BD * kWStride;
  T* down_s = up_s + kStages * BD * kWStride;

  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;
  const int group = lane >> 2;   // the accumulator row (and row + 8) this lane holds
  const int quad = lane & 3;     // its column pair
  const int64_t t = blockIdx.y;
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int chunks = (h + CH - 1) / CH;

  // the block's u rows; rows past bs and columns past D are zeros
  for (int i = tid; i < kRows * BD / 8; i += kThreads) {
    const int r = i / (BD / 8);
    const int c = (i % (BD / 8)) * 8;
    const bool ok = s0 + r < bs && c < d;
    cp_async16(us + r * kUStride + c, ok ? u + (s0 + r) * stride_us + t * stride_ut + c : u, ok);
  }
  // hidden chunk `chunk` into pipeline stage `stage`; units past h and rows past D are zeros, so they add
  // nothing to the output
  auto load_chunk = [&](int chunk, int stage) {
    const int h0 = chunk * CH;
    T* gs = gate_s + stage * BD * kWStride;
    T* vs = up_s + stage * BD * kWStride;
    T* ds = down_s + stage * CH * kDStride;
    for (int i = tid; i < BD * CH / 8; i += kThreads) {
      const int r = i / (CH / 8);
      const int c = (i % (CH / 8)) * 8;
      const bool ok = r < d && h0 + c < h;
      const int64_t off = (t * d + r) * h + h0 + c;
      cp_async16(gs + r * kWStride + c, ok ? w_gate + off : w_gate, ok);
      cp_async16(vs + r * kWStride + c, ok ? w_up + off : w_up, ok);
    }
    for (int i = tid; i < CH * BD / 8; i += kThreads) {
      const int r = i / (BD / 8);
      const int c = (i % (BD / 8)) * 8;
      const bool ok = h0 + r < h && c < d;
      cp_async16(ds + r * kDStride + c, ok ? w_down + (t * h + h0 + r) * d + c : w_down, ok);
    }
  };
  // group 0: the rows and chunk 0; then one group per chunk, empty past the last, so that
  // cp_async_wait<kStages - 2> at chunk c always means "chunk c has landed"
  load_chunk(0, 0);
  cp_async_commit();
#pragma unroll
  for (int s = 1; s < kStages - 1; ++s) {
    if (s < chunks) load_chunk(s, s);
    cp_async_commit();
  }

  const int row0 = warp * 16;
  const int64_t row_a = s0 + row0 + group;  // this lane's two output rows
  const int64_t row_b = row_a + 8;
  uint32_t ua[BD / 16][4];
  float acc[BD / 8][4];
#pragma unroll
  for (int n = 0; n < BD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  cp_async_wait<kStages - 2>();  // group 0: the rows (and chunk 0)
  __syncthreads();
#pragma unroll
  for (int k = 0; k < BD / 16; ++k) ldmatrix_x4(ua[k], us + frag_offset(lane, row0, k * 16, kUStride));

  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk c is visible to every warp, and every warp is done with chunk c - 1
    if (c + kStages - 1 < chunks) load_chunk(c + kStages - 1, (c + kStages - 1) % kStages);
    cp_async_commit();

    const int stage = c % kStages;
    const T* gs = gate_s + stage * BD * kWStride;
    const T* vs = up_s + stage * BD * kWStride;
    const T* ds = down_s + stage * CH * kDStride;
    float gacc[CH / 8][4] = {};
    float vacc[CH / 8][4] = {};
#pragma unroll
    for (int k = 0; k < BD / 16; ++k) {
#pragma unroll
      for (int q = 0; q < CH / 16; ++q) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, gs + frag_offset(lane, k * 16, q * 16, kWStride));
        Ops::mma(gacc[2 * q], ua[k], b[0], b[1]);
        Ops::mma(gacc[2 * q + 1], ua[k], b[2], b[3]);
        ldmatrix_x4_trans(b, vs + frag_offset(lane, k * 16, q * 16, kWStride));
        Ops::mma(vacc[2 * q], ua[k], b[0], b[1]);
        Ops::mma(vacc[2 * q + 1], ua[k], b[2], b[3]);
      }
    }
    // biases, the saved pre-activations, and SiLU(g) * v as the down product's A fragments (one per 16
    // units: act[q][0..1] from 8-unit tile 2q, act[q][2..3] from tile 2q + 1)
    uint32_t act[CH / 16][4];
#pragma unroll
    for (int j = 0; j < CH / 8; ++j) {
      const int col = c * CH + j * 8 + quad * 2;
      const bool in_h = col < h;  // h is a multiple of 8: both columns of the pair, or neither
      if (in_h && b_gate != nullptr) {
        const float b0 = Ops::to_float(b_gate[t * h + col]), b1 = Ops::to_float(b_gate[t * h + col + 1]);
        gacc[j][0] += b0; gacc[j][1] += b1; gacc[j][2] += b0; gacc[j][3] += b1;
      }
      if (in_h && b_up != nullptr) {
        const float b0 = Ops::to_float(b_up[t * h + col]), b1 = Ops::to_float(b_up[t * h + col + 1]);
        vacc[j][0] += b0; vacc[j][1] += b1; vacc[j][2] += b0; vacc[j][3] += b1;
      }
      if (g_out != nullptr && in_h) {  // [T, bs, h]
        if (row_a < bs) {
          *reinterpret_cast<uint32_t*>(g_out + (t * bs + row_a) * h + col) = Ops::pack(gacc[j][0], gacc[j][1]);
          *reinterpret_cast<uint32_t*>(v_out + (t * bs + row_a) * h + col) = Ops::pack(vacc[j][0], vacc[j][1]);
        }
        if (row_b < bs) {
          *reinterpret_cast<uint32_t*>(g_out + (t * bs + row_b) * h + col) = Ops::pack(gacc[j][2], gacc[j][3]);
          *reinterpret_cast<uint32_t*>(v_out + (t * bs + row_b) * h + col) = Ops::pack(vacc[j][2], vacc[j][3]);
        }
      }
      act[j / 2][2 * (j % 2)] = Ops::pack(silu(gacc[j][0]) * vacc[j][0], silu(gacc[j][1]) * vacc[j][1]);
      act[j / 2][2 * (j % 2) + 1] = Ops::pack(silu(gacc[j][2]) * vacc[j][2], silu(gacc[j][3]) * vacc[j][3]);
    }
#pragma unroll
    for (int q = 0; q < CH / 16; ++q) {
#pragma unroll
      for (int n = 0; n < BD / 8; n += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, ds + frag_offset(lane, q * 16, n * 8, kDStride));
        Ops::mma(acc[n], act[q], b[0], b[1]);
        Ops::mma(acc[n + 1], act[q], b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();  // no copy in flight when the block retires (the trailing groups are empty)

  // [bs, T, D], contiguous
#pragma unroll
  for (int n = 0; n < BD / 8; ++n) {
    const int col = n * 8 + quad * 2;
    if (col >= d) continue;  // D is a multiple of 8: both columns of the pair, or neither
    float b0 = 0.f, b1 = 0.f;
    if (b_down != nullptr) {
      b0 = Ops::to_float(b_down[t * d + col]);
      b1 = Ops::to_float(b_down[t * d + col + 1]);
    }
    if (row_a < bs) {
      *reinterpret_cast<uint32_t*>(out + (row_a * tokens + t) * d + col) = Ops::pack(acc[n][0] + b0, acc[n][1] + b1);
    }
    if (row_b < bs) {
      *reinterpret_cast<uint32_t*>(out + (row_b * tokens + t) * d + col) = Ops::pack(acc[n][2] + b0, acc[n][3] + b1);
    }
  }
}

// --- the wgmma form (sm_90a) --------------------------------------------------------------------
//
// One warpgroup (four warps) a block, one token and 64 samples, as above; the products are warpgroup
// instructions (wgmma.mma_async, csrc/wgmma.cuh) that read their operands from shared memory:
//
//   - u's 64 rows stay in shared memory as the A operand of the gate/up product (K-major core matrices);
//   - a chunk's gate and up columns sit side by side as one [D, 2 CH] B operand (N-major), so one
//     m64n(2 CH)k16 instruction a k-step forms both: the accumulator holds g in its first CH columns and v
//     in the rest;
//   - SiLU(g) * v, rounded, is the A operand of the down product straight from those registers
//     (m64n(D)k16 with A in registers), accumulated in fp32 over the chunks;
//   - the weights stream through kWgStages stages, kWgStages - 1 chunks ahead: a chunk's down product is
//     waited for at the end of its iteration, so the barrier at the top of the next one has retired every
//     thread's reads of the stage that iteration's copy overwrites (the chunk before). Waiting there costs
//     one small product's latency a chunk; it buys a third chunk in flight per block where the copies'
//     arrival is what the warps wait on (bench/NOTES.md, run270).
constexpr int kWgStages = 4;

template <int BD, int CH>
constexpr int wg_smem_elems() {
  return kRows * BD + kWgStages * (BD * 2 * CH + CH * BD);
}

template <typename T, int BD, int CH>
__global__ void __launch_bounds__(kThreads) pswiglu_fwd_wgmma_kernel(
    const T* __restrict__ u, int64_t stride_us, int64_t stride_ut, const T* __restrict__ w_gate,
    const T* __restrict__ w_up, const T* __restrict__ w_down, const T* __restrict__ b_gate,
    const T* __restrict__ b_up, const T* __restrict__ b_down, T* __restrict__ out, T* __restrict__ g_out,
    T* __restrict__ v_out, int bs, int tokens, int d, int h) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Ops = Dtype<T>;
  constexpr int kWgAhead = kWgStages - 1;  // chunks loaded ahead
  constexpr int kGU = 2 * CH;  // N of the gate/up product
  // element offsets of core matrices (8 x 8 elements, 64 contiguous), no padding:
  //   u     [64, BD]   K-major: (m, k) at (m / 8) * 8 BD + (k / 8) * 64 + (m % 8) * 8 + k % 8
  //   gu    [BD, kGU]  N-major: (k, n) at (k / 8) * 8 kGU + (n / 8) * 64 + (k % 8) * 8 + n % 8
  //   down  [CH, BD]   N-major: (k, n) at (k / 8) * 8 BD + (n / 8) * 64 + (k % 8) * 8 + n % 8
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* us = reinterpret_cast<T*>(smem_raw);
  T* gu_s = us + kRows * BD;
  T* down_s = gu_s + kWgStages * BD * kGU;

  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;
  const int group = lane >> 2;
  const int quad = lane & 3;
  const int64_t t = blockIdx.y;
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int chunks = (h + CH - 1) / CH;

  // 16-byte pieces: consecutive threads take consecutive rows of one core matrix (conflict-free stores)
  for (int i = tid; i < kRows * BD / 8; i += kThreads) {
    const int m = (i / BD) * 8 + i % 8;
    const int k = ((i / 8) % (BD / 8)) * 8;
    const bool ok = s0 + m < bs && k < d;
    cp_async16(us + (m / 8) * 8 * BD + (k / 8) * 64 + (m % 8) * 8, ok ? u + (s0 + m) * stride_us + t * stride_ut + k : u,
               ok);
  }
  // A thread's weight pieces keep their column and their smem place from chunk to chunk: its gate/up
  // column (gate or up, the unit in the chunk) and its down column are the same for all its pieces (the
  // thread count is a multiple of the pieces a row of core matrices holds), and piece j lies 1024 / kGU
  // (gate/up) or 1024 / BD (down) rows below piece 0. So the addresses are worked out once, here, and a
  // chunk adds h0 (gate/up) or h0 rows (down): the loop's address arithmetic is a few adds a piece.
  constexpr int kGuPieces = BD * kGU / 8 / kThreads;                   // 1 to 8, exact
  constexpr int kDownTotal = CH * BD / 8;
  constexpr int kDownPieces = (kDownTotal + kThreads - 1) / kThreads;  // 1 to 4 (half the threads idle at 64)
  const int gu_unit = ((tid / 8) % (kGU / 8)) * 8;                     // gate columns, then up columns
  const T* gu_src = (gu_unit < CH ? w_gate : w_up) + t * d * h + (gu_unit < CH ? gu_unit : gu_unit - CH);
  const int gu_h = h - (gu_unit < CH ? gu_unit : gu_unit - CH);        // chunks with h0 < gu_h hold the column
  const int gu_k0 = (tid / kGU) * 8 + tid % 8;
  const int gu_smem0 = (gu_k0 / 8) * 8 * kGU + (gu_unit / 8) * 64 + (gu_k0 % 8) * 8;
  const int dn_n = ((tid / 8) % (BD / 8)) * 8;
  const int dn_k0 = (tid / BD) * 8 + tid % 8;
  const T* dn_src = w_down + t * h * d + static_cast<int64_t>(dn_k0) * d + dn_n;
  const int dn_smem0 = (dn_k0 / 8) * 8 * BD + (dn_n / 8) * 64 + (dn_k0 % 8) * 8;
  auto load_chunk = [&](int chunk, int stage) {
    const int h0 = chunk * CH;
    T* gs = gu_s + stage * BD * kGU + gu_smem0;
    const bool gu_in = h0 < gu_h;
#pragma unroll
    for (int j = 0; j < kGuPieces; ++j) {
      const int k = gu_k0 + j * (1024 / kGU);
      const bool ok = gu_in && k < d;
      cp_async16(gs + j * 1024, ok ? gu_src + static_cast<int64_t>(k) * h + h0 : gu_src, ok);
    }
    T* ds = down_s + stage * CH * BD + dn_smem0;
    const T* dsrc = dn_src + static_cast<int64_t>(h0) * d;
#pragma unroll
    for (int j = 0; j < kDownPieces; ++j) {
      if (kDownTotal % kThreads != 0 && tid + j * kThreads >= kDownTotal) break;
      const int k = dn_k0 + j * (1024 / BD);
      const bool ok = h0 + k < h && dn_n < d;
      cp_async16(ds + j * 1024, ok ? dsrc + static_cast<int64_t>(j) * (1024 / BD) * d : w_down, ok);
    }
  };
  // group 0: the rows and chunk 0; then one group a chunk (empty past the last), so that at chunk c,
  // cp_async_wait<kWgAhead - 1> means "chunk c has landed"
  load_chunk(0, 0);
  cp_async_commit();
#pragma unroll
  for (int s = 1; s < kWgAhead; ++s) {
    if (s < chunks) load_chunk(s, s);
    cp_async_commit();
  }

  constexpr int kBytes = static_cast<int>(sizeof(T));
  // the descriptors of each operand's first k-step in stage 0; a k-step or a stage further is an add to
  // the encoded address (shared addresses stay below 2^18 bytes, so the 14-bit field never carries)
  const uint64_t u_desc = wgmma::descriptor(smem_addr(us), 64 * kBytes, 8 * BD * kBytes);
  const uint64_t gu_desc = wgmma::descriptor(smem_addr(gu_s), 8 * kGU * kBytes, 64 * kBytes);
  const uint64_t down_desc = wgmma::descriptor(smem_addr(down_s), 8 * BD * kBytes, 64 * kBytes);
  const int64_t row_a = s0 + warp * 16 + group;
  const int64_t row_b = row_a + 8;

  float acc[BD / 2];
#pragma unroll
  for (int i = 0; i < BD / 2; ++i) acc[i] = 0.f;

  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<kWgAhead - 1>();
    wgmma::fence_operands();
    __syncthreads();
    if (c + kWgAhead < chunks) load_chunk(c + kWgAhead, (c + kWgAhead) % kWgStages);
    cp_async_commit();

    const int stage = c % kWgStages;
    float gu[kGU / 2];  // written first by the k-step 0 product, which does not read it
    wgmma::fence();
    const uint64_t gu_desc_stage = gu_desc + ((stage * BD * kGU * kBytes) >> 4);
#pragma unroll
    for (int kk = 0; kk < BD / 16; ++kk) {
      // k-step kk: two core matrices along K (the encoded address counts 16-byte units)
      wgmma::Wgmma<T, kGU>::ss(gu, u_desc + ((kk * 2 * 64 * kBytes) >> 4),
                               gu_desc_stage + ((kk * 2 * 8 * kGU * kBytes) >> 4), kk > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();
#pragma unroll
    for (int i = 0; i < kGU / 2; ++i) wgmma::pin(gu[i]);

    uint32_t act[CH / 16][4];
#pragma unroll
    for (int j = 0; j < CH / 8; ++j) {
      float* g = gu + 4 * j;
      float* v = gu + 4 * (CH / 8 + j);
      const int col = c * CH + j * 8 + quad * 2;
      const bool in_h = col < h;
      if (in_h && b_gate != nullptr) {
        const float b0 = Ops::to_float(b_gate[t * h + col]), b1 = Ops::to_float(b_gate[t * h + col + 1]);
        g[0] += b0; g[1] += b1; g[2] += b0; g[3] += b1;
      }
      if (in_h && b_up != nullptr) {
        const float b0 = Ops::to_float(b_up[t * h + col]), b1 = Ops::to_float(b_up[t * h + col + 1]);
        v[0] += b0; v[1] += b1; v[2] += b0; v[3] += b1;
      }
      if (g_out != nullptr && in_h) {  // [T, bs, h]
        if (row_a < bs) {
          *reinterpret_cast<uint32_t*>(g_out + (t * bs + row_a) * h + col) = Ops::pack(g[0], g[1]);
          *reinterpret_cast<uint32_t*>(v_out + (t * bs + row_a) * h + col) = Ops::pack(v[0], v[1]);
        }
        if (row_b < bs) {
          *reinterpret_cast<uint32_t*>(g_out + (t * bs + row_b) * h + col) = Ops::pack(g[2], g[3]);
          *reinterpret_cast<uint32_t*>(v_out + (t * bs + row_b) * h + col) = Ops::pack(v[2], v[3]);
        }
      }
      act[j / 2][2 * (j % 2)] = Ops::pack(silu(g[0]) * v[0], silu(g[1]) * v[1]);
      act[j / 2][2 * (j % 2) + 1] = Ops::pack(silu(g[2]) * v[2], silu(g[3]) * v[3]);
    }

    wgmma::fence();
#pragma unroll
    for (int q = 0; q < CH / 16; ++q) {
      wgmma::Wgmma<T, BD>::rs(acc, act[q], down_desc + (((stage * CH * BD + q * 2 * 8 * BD) * kBytes) >> 4));
    }
    wgmma::commit();
    wgmma::wait<0>();  // this stage is overwritten by the copy issued after the next barrier
  }
#pragma unroll
  for (int i = 0; i < BD / 2; ++i) wgmma::pin(acc[i]);
  cp_async_wait<0>();

  // [bs, T, D], contiguous
#pragma unroll
  for (int n = 0; n < BD / 8; ++n) {
    const int col = n * 8 + quad * 2;
    if (col >= d) continue;
    float b0 = 0.f, b1 = 0.f;
    if (b_down != nullptr) {
      b0 = Ops::to_float(b_down[t * d + col]);
      b1 = Ops::to_float(b_down[t * d + col + 1]);
    }
    if (row_a < bs) {
      *reinterpret_cast<uint32_t*>(out + (row_a * tokens + t) * d + col) =
          Ops::pack(acc[4 * n] + b0, acc[4 * n + 1] + b1);
    }
    if (row_b < bs) {
      *reinterpret_cast<uint32_t*>(out + (row_b * tokens + t) * d + col) =
          Ops::pack(acc[4 * n + 2] + b0, acc[4 * n + 3] + b1);
    }
  }
#else
  __trap();  // not compiled for sm_90a: the host refuses the call before it gets here
#endif
}

// A contiguous copy where `t` is not contiguous or not 16-byte aligned (a no-op for parameters).
at::Tensor dense(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return is_aligned(c.data_ptr(), 16) ? c : c.clone();
}

void check_weight(const at::Tensor& w, const char* name, const at::Tensor& u, at::IntArrayRef shape) {
  check_cuda(w, name, u);
  TORCH_CHECK(w.sizes() == shape, name, ": expected shape ", shape, ", got ", w.sizes());
  TORCH_CHECK_TYPE(w.scalar_type() == u.scalar_type(), name, ": expected dtype ", u.scalar_type(),
                   " (u's; the cuda backend computes in one 16-bit dtype), got ", w.scalar_type());
}

template <typename T, int BD, int CH, bool WG>
void launch(const at::Tensor& u, const at::Tensor& w_gate, const at::Tensor& w_up, const at::Tensor& w_down,
            const at::Tensor* b_gate, const at::Tensor* b_up, const at::Tensor* b_down, at::Tensor& out,
            at::Tensor* g, at::Tensor* v) {
  const int bs = static_cast<int>(u.size(0));
  const int tokens = static_cast<int>(u.size(1));
  const int d = static_cast<int>(u.size(2));
  const int h = static_cast<int>(w_gate.size(2));
  auto ptr = [](const at::Tensor* x) { return x == nullptr ? nullptr : static_cast<const T*>(x->data_ptr()); };
  auto out_ptr = [](at::Tensor* x) { return x == nullptr ? nullptr : static_cast<T*>(x->data_ptr()); };
  const auto kernel = WG ? pswiglu_fwd_wgmma_kernel<T, BD, CH> : pswiglu_fwd_kernel<T, BD, CH>;
  constexpr int smem = (WG ? wg_smem_elems<BD, CH>() : smem_elems<BD, CH>()) * static_cast<int>(sizeof(T));
  {
    // the shared-memory limit is raised once per kernel and device, not on every call (as
    // sinkhorn_paired.cu's launch does)
    static std::mutex mutex;
    static std::set<int> ready;
    const int device = u.get_device();
    const std::lock_guard<std::mutex> lock(mutex);
    if (ready.count(device) == 0) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      ready.insert(device);
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(bs, kRows)), static_cast<unsigned>(tokens));
  kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<const T*>(u.data_ptr()), u.stride(0), u.stride(1), static_cast<const T*>(w_gate.data_ptr()),
      static_cast<const T*>(w_up.data_ptr()), static_cast<const T*>(w_down.data_ptr()), ptr(b_gate), ptr(b_up),
      ptr(b_down), static_cast<T*>(out.data_ptr()), out_ptr(g), out_ptr(v), bs, tokens, d, h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The hidden units a pipeline step, from UNIMIXER_PSWIGLU_CUDA_CHUNK (read at each call): 16 (default) or 32.
int chunk_switch() {
  const char* v = std::getenv("UNIMIXER_PSWIGLU_CUDA_CHUNK");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "16") == 0) return 16;
  if (std::strcmp(v, "32") == 0) return 32;
  TORCH_CHECK(false, "UNIMIXER_PSWIGLU_CUDA_CHUNK: expected 16 or 32, got '", v, "'");
  return 16;  // not reached
}

// The kernel, from UNIMIXER_PSWIGLU_CUDA_MMA (read at each call): "sync" (mma.sync, any build; the default)
// or "wgmma" (warpgroup instructions: a build for sm_90a and a device of compute capability 9.0).
bool wgmma_switch(const at::Tensor& u) {
  const char* v = std::getenv("UNIMIXER_PSWIGLU_CUDA_MMA");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "sync") == 0) return false;
  TORCH_CHECK(std::strcmp(v, "wgmma") == 0, "UNIMIXER_PSWIGLU_CUDA_MMA: expected sync or wgmma, got '", v, "'");
#if defined(UNIMIXER_SM90A)
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, u.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, u.get_device()));
  TORCH_CHECK(major == 9 && minor == 0, "UNIMIXER_PSWIGLU_CUDA_MMA=wgmma: the wgmma kernel runs on compute "
              "capability 9.0 (Hopper), this device is ", major, ".", minor, "; unset the switch");
  return true;
#else
  TORCH_CHECK(false, "UNIMIXER_PSWIGLU_CUDA_MMA=wgmma: unimixer_kernels._C was built without sm_90a; rebuild "
              "with UNIMIXER_CUDA_ARCH=9.0a (the default) or unset the switch");
  return false;
#endif
}

template <typename T, int CH, bool WG>
void launch_for_width(int d, const at::Tensor& u, const at::Tensor& w_gate, const at::Tensor& w_up,
                      const at::Tensor& w_down, const at::Tensor* b_gate, const at::Tensor* b_up,
                      const at::Tensor* b_down, at::Tensor& out, at::Tensor* g, at::Tensor* v) {
  if (d <= 32) {
    launch<T, 32, CH, WG>(u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  } else if (d <= 64) {
    launch<T, 64, CH, WG>(u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  } else {
    launch<T, kMaxD, CH, WG>(u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  }
}

template <typename T>
void launch_for_dtype(int d, const at::Tensor& u, const at::Tensor& w_gate, const at::Tensor& w_up,
                      const at::Tensor& w_down, const at::Tensor* b_gate, const at::Tensor* b_up,
                      const at::Tensor* b_down, at::Tensor& out, at::Tensor* g, at::Tensor* v) {
  const bool wg = wgmma_switch(u);
  const bool wide = chunk_switch() == 32;
  if (wg && wide) {
    launch_for_width<T, 32, true>(d, u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  } else if (wg) {
    launch_for_width<T, 16, true>(d, u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  } else if (wide) {
    launch_for_width<T, 32, false>(d, u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  } else {
    launch_for_width<T, 16, false>(d, u, w_gate, w_up, w_down, b_gate, b_up, b_down, out, g, v);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pswiglu_fwd(
    const at::Tensor& u_in, const at::Tensor& w_gate_in, const at::Tensor& w_up_in, const at::Tensor& w_down_in,
    const std::optional<at::Tensor>& b_gate_in, const std::optional<at::Tensor>& b_up_in,
    const std::optional<at::Tensor>& b_down_in, bool save) {
  TORCH_CHECK(u_in.is_cuda(), "u: expected a CUDA tensor, got one on ", u_in.device());
  TORCH_CHECK(u_in.dim() == 3, "u: expected [bs, T, D], got shape ", u_in.sizes());
  TORCH_CHECK_TYPE(u_in.scalar_type() == at::kBFloat16 || u_in.scalar_type() == at::kHalf,
                   "u: the cuda backend's pswiglu computes in bfloat16 or float16, got ", u_in.scalar_type());
  const int64_t bs = u_in.size(0), tokens = u_in.size(1), d = u_in.size(2);
  TORCH_CHECK(w_gate_in.dim() == 3, "w_gate: expected [T, D, h], got shape ", w_gate_in.sizes());
  const int64_t h = w_gate_in.size(2);
  check_weight(w_gate_in, "w_gate", u_in, {tokens, d, h});
  check_weight(w_up_in, "w_up", u_in, {tokens, d, h});
  check_weight(w_down_in, "w_down", u_in, {tokens, h, d});
  if (b_gate_in) check_weight(*b_gate_in, "b_gate", u_in, {tokens, h});
  if (b_up_in) check_weight(*b_up_in, "b_up", u_in, {tokens, h});
  if (b_down_in) check_weight(*b_down_in, "b_down", u_in, {tokens, d});
  TORCH_CHECK(d <= kMaxD && d % 8 == 0, "u: the cuda backend's pswiglu needs D <= ", kMaxD,
              " and a multiple of 8, got D=", d);
  TORCH_CHECK(h % 8 == 0, "w_gate: the cuda backend's pswiglu needs h a multiple of 8, got h=", h);
  TORCH_CHECK(tokens <= 65535, "u: the cuda backend's pswiglu takes at most 65535 tokens, got T=", tokens);
  TORCH_CHECK(bs < (int64_t{1} << 31) / kRows, "u: batch size ", bs, " is too large for the cuda backend");

  const c10::cuda::CUDAGuard guard(u_in.device());
  // u is read in place where its rows are 16-byte vectors (unit stride along D, other strides and the
  // start 16-byte aligned), else through one contiguous copy
  const int64_t vec = 16 / static_cast<int64_t>(u_in.element_size());
  const bool in_place = u_in.stride(2) == 1 && u_in.stride(0) % vec == 0 && u_in.stride(1) % vec == 0 &&
                        is_aligned(u_in.data_ptr(), 16);
  const at::Tensor u = in_place ? u_in : dense(u_in);
  const at::Tensor w_gate = dense(w_gate_in), w_up = dense(w_up_in), w_down = dense(w_down_in);
  std::optional<at::Tensor> b_gate, b_up, b_down;
  if (b_gate_in) b_gate = b_gate_in->contiguous();
  if (b_up_in) b_up = b_up_in->contiguous();
  if (b_down_in) b_down = b_down_in->contiguous();

  at::Tensor out = new_output({bs, tokens, d}, u.options());
  at::Tensor g = save ? new_output({tokens, bs, h}, u.options()) : at::empty({0}, u.options());
  at::Tensor v = save ? new_output({tokens, bs, h}, u.options()) : at::empty({0}, u.options());
  if (bs == 0 || tokens == 0 || d == 0) return {out, g, v};
  if (h == 0) {
    out.zero_();
    if (b_down) out.add_(b_down->unsqueeze(0));
    return {out, g, v};
  }
  const at::Tensor* bg = b_gate ? &*b_gate : nullptr;
  const at::Tensor* bu = b_up ? &*b_up : nullptr;
  const at::Tensor* bd = b_down ? &*b_down : nullptr;
  if (u.scalar_type() == at::kBFloat16) {
    launch_for_dtype<__nv_bfloat16>(static_cast<int>(d), u, w_gate, w_up, w_down, bg, bu, bd, out,
                                    save ? &g : nullptr, save ? &v : nullptr);
  } else {
    launch_for_dtype<__half>(static_cast<int>(d), u, w_gate, w_up, w_down, bg, bu, bd, out,
                             save ? &g : nullptr, save ? &v : nullptr);
  }
  return {out, g, v};
}

}  // namespace unimixer
