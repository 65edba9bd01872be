// Sinkhorn of dense logits, forward and backward, one launch per direction (the `cuda` backend of
// sinkhorn; SPEC §2.1), n <= 1024; symmetric logits above that go to sinkhorn_paired.cu. The maths and
// the saved state are the Triton resident kernels' (triton_kernels/sinkhorn.py,
// `sinkhorn_resident_fwd_kernel` / `_bwd_kernel`): log-domain, fp32, the per-iteration potentials U, V
// [n_mat, K, n] saved, everything else recomputed; the first
// iteration reduces with its maximum (log-sum-exp), the later ones as plain sums (the forward's
// iterates by one product an entry, see the forward kernel; the backward's by one exponential); the
// backward is the unrolled K-step map's.
//
// What differs most is how the tiles exchange their partial sums. A matrix is cut into tiles, one block
// per tile, every block resident for the whole call, the tile in registers: a warp holds ROWS rows,
// a lane COLS columns of them (ROWS * COLS = 32 entries a thread). Three shapes:
//
//   128 x 64   8 warps, 16 rows x 2 columns a lane, clusters of up to 16 blocks (non-portable);
//   64 x 128   8 warps,  8 rows x 4 columns a lane, clusters of up to 8;
//   128 x 128 16 warps,  8 rows x 4 columns a lane, clusters of up to 8.
//
// A row band's tiles (n_ct = ceil(n / tile columns) of them) form one thread-block cluster:
//
//   * row steps exchange through distributed shared memory: each block writes its rows' partials
//     into its own shared memory, one cluster barrier (release / acquire), then each reads its
//     peers' words. No global memory, no polling;
//   * column steps exchange through global memory as tagged words (an fp32 value and the step's
//     tag in one 8-byte store, so a reader that sees the tag sees the value): each block writes its
//     columns' partials and polls for its column band's, with a bounded wait that counts a failure
//     in `fail` instead of hanging. Two copies of the words suffice: a block writes step s + 2's
//     partials only after reading step s + 1's from every block of its column band, and each of
//     those wrote step s + 1's only after reading step s's.
//
// Symmetric logits: the backward's dM = (G + G^T) * scale in the same launch. Each block writes its
// tile of the working gradient G and a flag, waits for the flags of the (one or two) tiles under its
// transposed region, and reads that region. Reads and stores of whole rows of a tile run as 16-byte
// vectors where the layout allows (the kVec* bits), one element at a time otherwise.
//
// The sums are taken in a fixed order, so results are deterministic. Residency: the host checks
// with cudaOccupancyMaxActiveClusters that every cluster of the launch fits on the device at once
// before launching, and refuses otherwise (an idle GPU then runs them all; a GPU shared with other
// work only delays blocks until that work's blocks leave).
//
// Numerics follow the Triton kernels: S0 = logits * scale rounded once (no contraction into its
// uses), ex2.approx / lg2.approx for the iterates' exponentials and logarithms, products that feed
// a sum rounded before it. One difference: the forward's later iterates are the previous ones over
// their columns' sums (one product an entry) where the Triton kernels form exp(T1 - v) again; the
// two agree to rounding.

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <cooperative_groups.h>

#include "common.cuh"
#include "ops.h"
#include "sinkhorn_common.cuh"
#include "sinkhorn_paired.h"

namespace unimixer {
namespace {

namespace cg = cooperative_groups;
using namespace sk;  // NOLINT(build/namespaces): the shared device pieces

constexpr int kMaxN = 1024;                  // a row band in one cluster: 8 tiles of 128 or 16 of 64
// The forward forms a column's iterates exactly again (exp2) once its potential has fallen this much
// (log2 units) below its highest value since they were last formed so; between, one product an entry
constexpr float kRefreshBits = 8.f;

template <int WARPS_, int ROWS_, int COLS_, bool EVEN_ = false>
struct Shape {
  // EVEN: n a multiple of the tile's rows and columns, so every tile lies inside the matrix and no
  // access or value needs a bounds check (Frame::row_ok, col_ok)
  static constexpr bool kEven = EVEN_;
  using Even = Shape<WARPS_, ROWS_, COLS_, true>;
  static constexpr int kWarps = WARPS_;
  static constexpr int kRowsPerWarp = ROWS_;
  static constexpr int kColsPerLane = COLS_;
  static constexpr int kThreads = WARPS_ * kWarpSize;
  static constexpr int kRows = WARPS_ * ROWS_;              // tile rows
  static constexpr int kCols = kWarpSize * COLS_;           // tile columns
  static constexpr int kLanesPerRow = kWarpSize / ROWS_;    // lanes holding one row after the reduction
  static constexpr int kMaxCluster = kMaxN / kCols;         // blocks of a row band at most
  static constexpr int kRankReads = kMaxCluster / kLanesPerRow;  // peers' words a lane reads at most
  static constexpr int kGroups = kThreads / kCols;          // threads per column in the column wait
  static constexpr int kMaxRowTiles = kMaxN / kRows;
  static constexpr int kWaitWords = (kMaxRowTiles + kGroups - 1) / kGroups;  // words a thread polls at most
  // rows of the column wait's shared buffer: every row tile's partial (the first iteration's
  // log-sum-exp), or one sum per group of threads (the later ones)
  static constexpr int kColParts = kMaxRowTiles > kGroups ? kMaxRowTiles : kGroups;
  static_assert(kWarpSize % ROWS_ == 0 && kThreads % kCols == 0, "tile shape");
};

using Tile128x64 = Shape<8, 16, 2>;
using Tile64x128 = Shape<8, 8, 4>;
using Tile128x128 = Shape<16, 8, 4>;

template <class S>
struct Smem {
  float rowpart[2][S::kRows];             // this block's row partials (read by the cluster)
  float colred[S::kWarps][S::kCols];      // per-warp column partials
  float colm[S::kCols];                   // the first iteration's column maxima
  float colpart[S::kColParts][S::kCols];  // the column band's partials
};

// The split cluster barrier: each block arrives after its last read of its peers' shared memory and
// waits for the others only before it exits, instead of a full cluster.sync() at the end.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

// One tile's view of the launch: which block, which rows and columns.
template <class S>
struct Frame {
  int tid, warp, lane, p, q, n, n_rt, n_ct;
  int64_t mat;
  int row0, col0;  // this thread's first row and column in the matrix
  __device__ Frame(int n_, int n_rt_, int n_ct_) : n(n_), n_rt(n_rt_), n_ct(n_ct_) {
    tid = threadIdx.x;
    warp = tid / kWarpSize;
    lane = tid % kWarpSize;
    p = blockIdx.x / n_ct;
    q = blockIdx.x % n_ct;  // the block's rank in its cluster
    mat = blockIdx.y;
    row0 = p * S::kRows + warp * S::kRowsPerWarp;
    col0 = q * S::kCols + lane * S::kColsPerLane;
  }
  __device__ bool row_ok(int i) const { return S::kEven || row0 + i < n; }
  __device__ bool col_ok(int j) const { return S::kEven || col0 + j < n; }
  __device__ bool rows_inside() const { return S::kEven || row0 + S::kRowsPerWarp <= n; }  // all its rows
  __device__ bool cols_inside() const { return S::kEven || col0 + S::kColsPerLane <= n; }
};

template <class S>
using TileRegs = float[S::kRowsPerWarp][S::kColsPerLane];

// This thread's entries of a [n, n] matrix at `base` (rows s1, columns s2 apart), 0 outside the matrix,
// into `out` (ADD: added to it, rounded once): each of its rows a run of C elements. TRANSPOSED: the
// entries of the transposed matrix, base[col * s1 + row * s2], each of its columns a run of R elements.
// `vec`: the runs are contiguous and aligned (unit s2, s1 and base 16-byte aligned), read as vectors
// where they lie inside the matrix. Both reads are coalesced for row-major data: a warp reads 32 runs
// of one row (direct) or one run in each of 32 rows, whose other runs the same lanes read next
// (transposed).
template <bool TRANSPOSED, bool ADD = false, typename T, class S>
__device__ __forceinline__ void read_tile(const Frame<S>& f, const T* __restrict__ base, int64_t s1, int64_t s2,
                                          bool vec, TileRegs<S>& out) {
  constexpr int R = S::kRowsPerWarp, C = S::kColsPerLane;
  if constexpr (!TRANSPOSED) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t r = f.row0 + i;
      float run[C];
      if (vec && f.row_ok(i) && f.cols_inside()) {
        load_run<T, C>(base + r * s1 + f.col0, run);
      } else {
#pragma unroll
        for (int j = 0; j < C; ++j) {
          run[j] = f.row_ok(i) && f.col_ok(j) ? static_cast<float>(base[r * s1 + (f.col0 + j) * s2]) : 0.f;
        }
      }
#pragma unroll
      for (int j = 0; j < C; ++j) out[i][j] = ADD ? __fadd_rn(out[i][j], run[j]) : run[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const int64_t c = f.col0 + j;
      float run[R];
      if (vec && f.col_ok(j) && f.rows_inside()) {
        load_run<T, R>(base + c * s1 + f.row0, run);
      } else {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          run[i] = f.row_ok(i) && f.col_ok(j) ? static_cast<float>(base[c * s1 + (f.row0 + i) * s2]) : 0.f;
        }
      }
#pragma unroll
      for (int i = 0; i < R; ++i) out[i][j] = ADD ? __fadd_rn(out[i][j], run[i]) : run[i];
    }
  }
}

// S0 = logits * scale (symmetric: (logits + logits^T) * scale) of this thread's entries; 0 outside the
// matrix. Read once per call.
template <typename T, bool SYM, class S>
__device__ void load_s0(const Frame<S>& f, const T* __restrict__ x, int64_t s0, int64_t s1, int64_t s2,
                        bool vec, float scale, TileRegs<S>& out) {
  const T* base = x + f.mat * s0;
  read_tile<false>(f, base, s1, s2, vec, out);
  if constexpr (SYM) read_tile<true, true>(f, base, s1, s2, vec, out);
#pragma unroll
  for (int i = 0; i < S::kRowsPerWarp; ++i) {
#pragma unroll
    for (int j = 0; j < S::kColsPerLane; ++j) out[i][j] = __fmul_rn(out[i][j], scale);
  }
}

// Row i of this thread's entries, values[j] for its columns, into the [n, n] row-major `dst` (vector
// stores where `vec` and the run lies inside the matrix).
template <typename T, class S>
__device__ __forceinline__ void store_row_run(const Frame<S>& f, T* __restrict__ dst, int i, bool vec,
                                              const float (&values)[S::kColsPerLane]) {
  if (!f.row_ok(i)) return;
  T* row = dst + static_cast<int64_t>(f.row0 + i) * f.n + f.col0;
  if (vec && f.cols_inside()) {
    store_run<T, S::kColsPerLane>(row, values);
  } else {
#pragma unroll
    for (int j = 0; j < S::kColsPerLane; ++j) {
      if (f.col_ok(j)) row[j] = static_cast<T>(values[j]);
    }
  }
}

// --- row steps: the cluster --------------------------------------------------------------------
//
// A warp's ROWS rows are reduced across its 32 lanes by halving (sums, and the first row step's maxima): ROWS values per lane, then half as
// many (each step a shuffle that exchanges halves), down to one, then plain shuffles across the
// kLanesPerRow lanes left per row: 9 shuffles at 8 rows (40 one row at a time), 10 at 16. Lane l ends
// holding row lane_row(l). Everything per row (the exchange, its logarithm and reciprocal) then happens
// once per lane, and `broadcast_rows` hands the rows' values back to every lane.

template <class S>
__device__ __forceinline__ int lane_row(int lane) {
  return (lane / S::kLanesPerRow) % S::kRowsPerWarp;
}

// Sum (MAX: maximum) over the warp of each of the warp's rows: returns row lane_row(lane)'s.
template <class S, bool MAX = false>
__device__ __forceinline__ float warp_row_reduce(const float (&v)[S::kRowsPerWarp], int lane) {
  float w[S::kRowsPerWarp];
#pragma unroll
  for (int k = 0; k < S::kRowsPerWarp; ++k) w[k] = v[k];
  halve_rows<MAX, S::kRowsPerWarp / 2, kWarpSize / 2>(w, lane);
  float y = w[0];
#pragma unroll
  for (int m = S::kLanesPerRow / 2; m >= 1; m /= 2) y = combine(MAX, y, __shfl_xor_sync(kFull, y, m));
  return y;
}

// Every lane gets the rows' values from the lanes holding them.
template <class S>
__device__ __forceinline__ void broadcast_rows(float mine, float (&r)[S::kRowsPerWarp]) {
#pragma unroll
  for (int k = 0; k < S::kRowsPerWarp; ++k) r[k] = __shfl_sync(kFull, mine, k * S::kLanesPerRow);
}

// `mine`: this tile's partial of row lane_row(lane). Returns that row's total over the row band's n_ct
// tiles (a sum, or with LSE a log-sum-exp). `buf`: this step's copy of the block's row partials.
// `last`: the kernel's last exchange; the block then arrives at the cluster barrier it waits on
// before it exits (cluster_wait), once its reads of the peers' shared memory are done.
template <bool LSE, class S>
__device__ float row_exchange(const Frame<S>& f, cg::cluster_group& cluster, float* buf, float mine, bool last) {
  const int rank0 = f.lane % S::kLanesPerRow;
  float* slot = buf + f.warp * S::kRowsPerWarp + lane_row<S>(f.lane);
  if (rank0 == 0) *slot = mine;
  cluster.sync();  // release this block's partials, acquire the peers'
  // the lanes of a row read ranks rank0, rank0 + kLanesPerRow, ...
  const float none = LSE ? -INFINITY : 0.f;
  float a[S::kRankReads];
#pragma unroll
  for (int k = 0; k < S::kRankReads; ++k) {
    const int rank = rank0 + k * S::kLanesPerRow;
    a[k] = rank < f.n_ct ? *cluster.map_shared_rank(slot, rank) : none;
  }
  if (last) cluster_arrive();
  if constexpr (LSE) {
    float m = a[0];
#pragma unroll
    for (int k = 1; k < S::kRankReads; ++k) m = fmaxf(m, a[k]);
#pragma unroll
    for (int x = S::kLanesPerRow / 2; x >= 1; x /= 2) m = fmaxf(m, __shfl_xor_sync(kFull, m, x));
    m = lse_shift(m);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < S::kRankReads; ++k) s = __fadd_rn(s, ex2_ftz((a[k] - m) * kLog2e));
#pragma unroll
    for (int x = S::kLanesPerRow / 2; x >= 1; x /= 2) s += __shfl_xor_sync(kFull, s, x);
    return lse_finish(m, s);
  } else {
    float total = a[0];
#pragma unroll
    for (int k = 1; k < S::kRankReads; ++k) total += a[k];
#pragma unroll
    for (int x = S::kLanesPerRow / 2; x >= 1; x /= 2) total += __shfl_xor_sync(kFull, total, x);
    return total;
  }
}

// --- column steps: global tagged words ---------------------------------------------------------

// The tile's column sums of this thread's column partials `c` (its columns summed over its rows);
// valid in threads tid < kCols (column tid).
template <class S>
__device__ float col_tile_sum(const Frame<S>& f, Smem<S>& sm, const float (&c)[S::kColsPerLane]) {
#pragma unroll
  for (int j = 0; j < S::kColsPerLane; ++j) sm.colred[f.warp][f.lane * S::kColsPerLane + j] = c[j];
  __syncthreads();
  float part = 0.f;
  if (f.tid < S::kCols) {
    part = sm.colred[0][f.tid];
#pragma unroll
    for (int w = 1; w < S::kWarps; ++w) part += sm.colred[w][f.tid];
  }
  return part;
}

// The tile's column log-sum-exps of x (-inf outside the matrix); valid in threads tid < kCols.
template <class S>
__device__ float col_tile_lse(const Frame<S>& f, Smem<S>& sm, const TileRegs<S>& x) {
  float c[S::kColsPerLane];
#pragma unroll
  for (int j = 0; j < S::kColsPerLane; ++j) {
    c[j] = x[0][j];
#pragma unroll
    for (int i = 1; i < S::kRowsPerWarp; ++i) c[j] = fmaxf(c[j], x[i][j]);
    sm.colred[f.warp][f.lane * S::kColsPerLane + j] = c[j];
  }
  __syncthreads();
  if (f.tid < S::kCols) {
    float m = sm.colred[0][f.tid];
#pragma unroll
    for (int w = 1; w < S::kWarps; ++w) m = fmaxf(m, sm.colred[w][f.tid]);
    sm.colm[f.tid] = lse_shift(m);
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < S::kColsPerLane; ++j) {
    const float m = sm.colm[f.lane * S::kColsPerLane + j];
    c[j] = 0.f;
#pragma unroll
    for (int i = 0; i < S::kRowsPerWarp; ++i) c[j] += ex2_ftz((x[i][j] - m) * kLog2e);
  }
  const float s = col_tile_sum(f, sm, c);
  return f.tid < S::kCols ? lse_finish(sm.colm[f.tid], s) : 0.f;
}

// Publish the tile's column partial (threads tid < kCols) with `tag` into `copy` [n_rt, n_ct * kCols].
template <class S>
__device__ void col_publish(const Frame<S>& f, Word* copy, float part, int tag) {
  if (f.tid < S::kCols) {
    store_word(copy + (static_cast<int64_t>(f.p) * f.n_ct + f.q) * S::kCols + f.tid, tagged(part, tag));
  }
}

// Wait for the column band's partials with `tag` in `copy`; returns in `out` the totals (sums, or
// with LSE log-sum-exps) of this thread's columns.
template <bool LSE, class S>
__device__ void col_collect(const Frame<S>& f, Smem<S>& sm, const Word* copy, int tag, Word* fail,
                            float (&out)[S::kColsPerLane]) {
  const int c = f.tid % S::kCols, g = f.tid / S::kCols;
  const Word* col = copy + f.q * S::kCols + c;
  const int64_t band = static_cast<int64_t>(f.n_ct) * S::kCols;
  Word w[S::kWaitWords];
#pragma unroll
  for (int k = 0; k < S::kWaitWords; ++k) {  // every read in flight at once
    const int pp = g + k * S::kGroups;
    w[k] = pp < f.n_rt ? load_word(col + pp * band) : tagged(0.f, tag);
  }
#pragma unroll
  for (int k = 0; k < S::kWaitWords; ++k) {
    w[k] = wait_tag<load_word>(col + (g + k * S::kGroups) * band, tag, w[k], fail);
  }
  if constexpr (LSE) {
    // every tile's partial, then each thread its columns' log-sum-exp over the band
#pragma unroll
    for (int k = 0; k < S::kWaitWords; ++k) {
      const int pp = g + k * S::kGroups;
      if (pp < f.n_rt) sm.colpart[pp][c] = __uint_as_float(static_cast<unsigned>(w[k]));
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < S::kColsPerLane; ++j) {
      const int cc = f.lane * S::kColsPerLane + j;
      float m = -INFINITY;
      for (int pp = 0; pp < f.n_rt; ++pp) m = fmaxf(m, sm.colpart[pp][cc]);
      m = lse_shift(m);
      float s = 0.f;
      for (int pp = 0; pp < f.n_rt; ++pp) s += ex2_ftz((sm.colpart[pp][cc] - m) * kLog2e);
      out[j] = lse_finish(m, s);
    }
  } else {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < S::kWaitWords; ++k) s += __uint_as_float(static_cast<unsigned>(w[k]));
    sm.colpart[g][c] = s;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < S::kColsPerLane; ++j) {
      out[j] = 0.f;
#pragma unroll
      for (int gg = 0; gg < S::kGroups; ++gg) out[j] += sm.colpart[gg][f.lane * S::kColsPerLane + j];
    }
  }
}

// Potentials: row values by the first lane of each row's lanes (`mine`, row lane_row(lane)) in the
// blocks of rank 0; column values by warp 0 of the first row band.
template <class S>
__device__ void store_row(const Frame<S>& f, float* dst, float mine) {
  const int i = lane_row<S>(f.lane);
  if (f.q == 0 && f.lane % S::kLanesPerRow == 0 && f.row_ok(i)) dst[f.row0 + i] = mine;
}

template <class S>
__device__ void store_cols(const Frame<S>& f, float* dst, const float (&c)[S::kColsPerLane]) {
  if (f.p != 0 || f.warp != 0) return;
#pragma unroll
  for (int j = 0; j < S::kColsPerLane; ++j) {
    if (f.col_ok(j)) dst[f.col0 + j] = c[j];
  }
}

// --- kernels -----------------------------------------------------------------------------------

// P, U, V of matrix blockIdx.y. Grid (n_rt * n_ct, n_mat), clusters of (n_ct, 1, 1). `words`:
// [n_mat, 2, n_rt, n_ct * kCols] zeroed tagged words; `fail`: [n_mat] failure counts; `vec`: kVec* bits.
template <typename T, class S, bool SYM>
__global__ void __launch_bounds__(S::kThreads, 1) sinkhorn_fwd_kernel(
    const T* __restrict__ x, float* __restrict__ P, float* __restrict__ U, float* __restrict__ V, Word* words,
    Word* fail, int n, int K, int n_rt, int n_ct, int64_t s0, int64_t s1, int64_t s2, float scale, int vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int R = S::kRowsPerWarp, C = S::kColsPerLane;
  __shared__ __align__(16) Smem<S> sm;
  cg::cluster_group cluster = cg::this_cluster();
  const Frame<S> f(n, n_rt, n_ct);
  const int64_t copy_words = static_cast<int64_t>(n_rt) * n_ct * S::kCols;
  Word* pc = words + f.mat * 2 * copy_words;
  fail += f.mat;
  U += f.mat * K * n;
  V += f.mat * K * n;
  float t[R][C];
  load_s0<T, SYM>(f, x, s0, s1, s2, vec & kVecLogits, scale, t);
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      if (!(f.row_ok(i) && f.col_ok(j))) t[i][j] = -INFINITY;
    }
  }
  // the first iteration, from S0, with maxima: row step, then column step
  float r[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    r[i] = t[i][0];
#pragma unroll
    for (int j = 1; j < C; ++j) r[i] = fmaxf(r[i], t[i][j]);
  }
  const float m_own = lse_shift(warp_row_reduce<S, true>(r, f.lane));  // row lane_row(lane)'s maximum
  broadcast_rows<S>(m_own, r);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const float m = r[i];
    r[i] = 0.f;
#pragma unroll
    for (int j = 0; j < C; ++j) r[i] += ex2_ftz((t[i][j] - m) * kLog2e);
  }
  const float tile_lse = lse_finish(m_own, warp_row_reduce<S>(r, f.lane));
  const float u1 = row_exchange<true>(f, cluster, sm.rowpart[0], tile_lse, K == 1);
  store_row(f, U, u1);
  broadcast_rows<S>(u1, r);
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) t[i][j] = t[i][j] - r[i];
  }
  float v[C];
  col_publish(f, pc, col_tile_lse(f, sm, t), 1);
  col_collect<true>(f, sm, pc, 1, fail, v);
  store_cols(f, V, v);
  // later iterations: E = exp(T1 - v) with T1 = S0 - u_1 - v_1 and v the potentials relative to v_1,
  // plain sums. After a column step E / c is the next E (exp(T1 - v - log c)): one product an entry in
  // place of an exponential. Rounding that scales a column's entries is undone by the next column
  // step, which measures that column's sum again. What a product cannot bring back is an entry that
  // underflowed while its column's potential was high: a column whose potential has fallen by
  // kRefreshBits since its iterates were last formed as exp2(T1 - v) is formed so again, so that an
  // entry lost to underflow (below 2^-149) is back before it could exceed 2^-141. The decision is per
  // column and the same in every block. With random logits at tau = 0.05 and n = 1024 it comes once
  // (symmetric) or 23 times (not) in the 19456 columns and iterations of K = 20, with the tests'
  // dominated rows 375 times in 5700 (bench/results/2026-12-01-h200-run176/refresh_model.py); at 4 bits
  // 90 times, and a warp with one such column among its 128 forms them all (run175: 6.6 µs slower).
  float e[R][C];
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      t[i][j] = __fmul_rn(t[i][j] - v[j], kLog2e);
      e[i][j] = ex2(t[i][j]);
    }
  }
  float rinv[R], vrel[C], vhigh[C];
#pragma unroll
  for (int i = 0; i < R; ++i) rinv[i] = 1.f;
#pragma unroll
  for (int j = 0; j < C; ++j) vrel[j] = vhigh[j] = 0.f;
  for (int k = 1; k < K; ++k) {
    // row step k: E = exp(T1 - v_{k-1}) summed along the rows
#pragma unroll
    for (int i = 0; i < R; ++i) {
      r[i] = e[i][0];
#pragma unroll
      for (int j = 1; j < C; ++j) r[i] += e[i][j];
    }
    float total = row_exchange<false>(f, cluster, sm.rowpart[k % 2], warp_row_reduce<S>(r, f.lane), k == K - 1);
    total = total > 0.f ? total : 1.f;  // rows outside the matrix
    store_row(f, U + static_cast<int64_t>(k) * n, lg2(total) * kLn2);
    broadcast_rows<S>(1.f / total, rinv);
    // column step k: the iterate after the row step, E / r, summed along the columns
    float c[C];
#pragma unroll
    for (int j = 0; j < C; ++j) {
      c[j] = __fmul_rn(e[0][j], rinv[0]);
#pragma unroll
      for (int i = 1; i < R; ++i) c[j] = __fmaf_rn(e[i][j], rinv[i], c[j]);
    }
    Word* copy = pc + (k % 2) * copy_words;
    col_publish(f, copy, col_tile_sum(f, sm, c), k + 1);
    col_collect<false>(f, sm, copy, k + 1, fail, c);
    float cinv[C];
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const float sum = c[j] > 0.f ? c[j] : 1.f;  // columns outside the matrix
      vrel[j] += lg2(sum);
      cinv[j] = __frcp_rn(sum);
      c[j] = vrel[j] * kLn2;
    }
    store_cols(f, V + static_cast<int64_t>(k) * n, c);
    bool again[C], any = false;
#pragma unroll
    for (int j = 0; j < C; ++j) {
      vhigh[j] = fmaxf(vhigh[j], vrel[j]);
      again[j] = vhigh[j] - vrel[j] > kRefreshBits;
      vhigh[j] = again[j] ? vrel[j] : vhigh[j];
      any = any || again[j];
    }
    if (__any_sync(kFull, any)) {  // rare: branches around the exponentials, not predicated ones
#pragma unroll
      for (int j = 0; j < C; ++j) {
        if (__any_sync(kFull, again[j])) {
#pragma unroll
          for (int i = 0; i < R; ++i) e[i][j] = again[j] ? ex2(t[i][j] - vrel[j]) : __fmul_rn(e[i][j], cinv[j]);
        } else {
#pragma unroll
          for (int i = 0; i < R; ++i) e[i][j] = __fmul_rn(e[i][j], cinv[j]);
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < R; ++i) {
#pragma unroll
        for (int j = 0; j < C; ++j) e[i][j] = __fmul_rn(e[i][j], cinv[j]);
      }
    }
  }
  // P = exp(T1 - u - v) = exp(T1 - v) / r
  float* out = P + f.mat * n * n;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    float row[C];
#pragma unroll
    for (int j = 0; j < C; ++j) row[j] = e[i][j] * rinv[i];
    store_row_run(f, out, i, vec & kVecOut, row);
  }
  cluster_wait();  // no block leaves while a peer may still read its shared memory
#endif
}

// dM of matrix blockIdx.y. The steps of the Triton resident backward: G = dP * P; for k = K-1 .. 0:
// the column step's sums (global), the row step's (cluster). One exponential per entry per iteration:
// the row step's iterate is the column step's times exp(v_k - v_{k-1}) per column. Then dM = G *
// grad_scale, or, SYM, (G + G^T) * grad_scale: each block publishes its tile of G in `G` [n_mat, n, n]
// with a flag in `flags` [n_mat, n_rt * n_ct] (zeroed), waits for the flags of the tiles under its
// transposed region, and reads that region.
template <typename T, class S, bool SYM>
__global__ void __launch_bounds__(S::kThreads, 1) sinkhorn_bwd_kernel(
    const T* __restrict__ x, const float* __restrict__ dp, const float* __restrict__ U,
    const float* __restrict__ V, float* __restrict__ G, T* __restrict__ dx, Word* words, Word* flags, Word* fail,
    int n, int K, int n_rt, int n_ct, int64_t s0, int64_t s1, int64_t s2, int64_t sd0, int64_t sd1, int64_t sd2,
    float scale, float grad_scale, int vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int R = S::kRowsPerWarp, C = S::kColsPerLane;
  __shared__ __align__(16) Smem<S> sm;
  cg::cluster_group cluster = cg::this_cluster();
  const Frame<S> f(n, n_rt, n_ct);
  const int64_t copy_words = static_cast<int64_t>(n_rt) * n_ct * S::kCols;
  Word* pc = words + f.mat * 2 * copy_words;
  fail += f.mat;
  U += f.mat * K * n;
  V += f.mat * K * n;
  auto rows_at = [&](int k, float (&u)[R]) {  // U[k] * log2(e) of this thread's rows
#pragma unroll
    for (int i = 0; i < R; ++i) {
      u[i] = f.row_ok(i) ? __fmul_rn(U[static_cast<int64_t>(k) * n + f.row0 + i], kLog2e) : 0.f;
    }
  };
  auto cols_at = [&](int k, float (&v)[C]) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      v[j] = f.col_ok(j) ? __fmul_rn(V[static_cast<int64_t>(k) * n + f.col0 + j], kLog2e) : 0.f;
    }
  };
  float u[R], v[C], v1[C], t[R][C];
#pragma unroll
  for (int i = 0; i < R; ++i) u[i] = f.row_ok(i) ? U[f.row0 + i] : 0.f;  // in flight with the logits' reads
#pragma unroll
  for (int j = 0; j < C; ++j) v1[j] = f.col_ok(j) ? V[f.col0 + j] : 0.f;
  load_s0<T, SYM>(f, x, s0, s1, s2, vec & kVecLogits, scale, t);
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      t[i][j] = (f.row_ok(i) && f.col_ok(j)) ? __fmul_rn((t[i][j] - u[i]) - v1[j], kLog2e) : -INFINITY;
    }
  }
#pragma unroll
  for (int j = 0; j < C; ++j) v1[j] = __fmul_rn(v1[j], kLog2e);
  if (K > 1) {
    rows_at(K - 1, u);
    cols_at(K - 1, v);
  } else {
#pragma unroll
    for (int i = 0; i < R; ++i) u[i] = 0.f;
#pragma unroll
    for (int j = 0; j < C; ++j) v[j] = 0.f;
  }
  float g[R][C], c[C];
  read_tile<false>(f, dp + f.mat * sd0, sd1, sd2, vec & kVecGrad, g);  // dP
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) {
      g[i][j] = __fmul_rn(g[i][j], ex2_ftz((t[i][j] - u[i]) - v[j]));
      c[j] = i == 0 ? g[i][j] : __fadd_rn(c[j], g[i][j]);
    }
  }
  col_publish(f, pc, col_tile_sum(f, sm, c), 1);
  for (int s = 0; s < K; ++s) {
    const int k = K - 1 - s;
    Word* copy = pc + (s % 2) * copy_words;
    float vp[C];
    if (k > 0) {
      rows_at(k, u);
      cols_at(k, v);
    } else {
#pragma unroll
      for (int i = 0; i < R; ++i) u[i] = 0.f;
#pragma unroll
      for (int j = 0; j < C; ++j) v[j] = 0.f;
    }
    if (k > 1) {
      cols_at(k - 1, vp);
    } else {
#pragma unroll
      for (int j = 0; j < C; ++j) vp[j] = k == 0 ? -v1[j] : 0.f;
    }
    // column step k: the column band's column sums of step s
    col_collect<false>(f, sm, copy, s + 1, fail, c);
    float e[R][C], r[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        e[i][j] = ex2_ftz((t[i][j] - u[i]) - v[j]);
        g[i][j] = __fmaf_rn(-e[i][j], c[j], g[i][j]);
        r[i] = j == 0 ? g[i][j] : __fadd_rn(r[i], g[i][j]);
      }
    }
    // row step k: the row band's row sums
    broadcast_rows<S>(row_exchange<false>(f, cluster, sm.rowpart[s % 2], warp_row_reduce<S>(r, f.lane), k == 0), r);
    float fac[C];
#pragma unroll
    for (int j = 0; j < C; ++j) fac[j] = ex2(v[j] - vp[j]);
#pragma unroll
    for (int i = 0; i < R; ++i) {
#pragma unroll
      for (int j = 0; j < C; ++j) {
        g[i][j] = __fmaf_rn(-__fmul_rn(e[i][j], fac[j]), r[i], g[i][j]);
        c[j] = i == 0 ? g[i][j] : __fadd_rn(c[j], g[i][j]);
      }
    }
    if (k > 0) col_publish(f, pc + ((s + 1) % 2) * copy_words, col_tile_sum(f, sm, c), s + 2);
  }
  const int64_t base = f.mat * n * n;
  if constexpr (SYM) {
#pragma unroll
    for (int i = 0; i < R; ++i) store_row_run(f, G + base, i, vec & kVecOut, g[i]);
    __syncthreads();  // every thread's stores before the release
    const int tag = K + 2;  // beyond the column steps' tags
    Word* mine = flags + f.mat * n_rt * n_ct;
    if (f.tid == 0) store_word_release(mine + blockIdx.x, tagged(0.f, tag));
    // the transposed region: G's rows q * kCols .., columns p * kRows .., in row tiles rt0 .. rt1 and column
    // tiles ct0 .. ct1 (one or two tiles)
    const int rt0 = f.q * S::kCols / S::kRows, rt1 = min(n_rt - 1, (f.q * S::kCols + S::kCols - 1) / S::kRows);
    const int ct0 = f.p * S::kRows / S::kCols, ct1 = min(n_ct - 1, (f.p * S::kRows + S::kRows - 1) / S::kCols);
    const int width = ct1 - ct0 + 1;
    if (f.tid < (rt1 - rt0 + 1) * width) {
      const Word* flag = mine + (rt0 + f.tid / width) * n_ct + ct0 + f.tid % width;
      wait_tag<load_word_acquire>(flag, tag, load_word_acquire(flag), fail);
    }
    __syncthreads();  // the waits' acquires before the block's reads
    read_tile<true, true>(f, G + base, n, 1, vec & kVecOut, g);
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    float row[C];
#pragma unroll
    for (int j = 0; j < C; ++j) row[j] = g[i][j] * grad_scale;
    store_row_run(f, dx + base, i, vec & kVecOut, row);
  }
  cluster_wait();  // no block leaves while a peer may still read its shared memory
#endif
}

// --- host --------------------------------------------------------------------------------------

// The tile shapes, in the order 'auto' tries them. At n = 512 (run168, fwd+bwd, CUDA graphs): 128 x 64
// 130.0 µs, 64 x 128 145.5, 128 x 128 152.5 (32, 32 and 16 blocks): fewer row tiles a column band (its
// global wait) and more SMs both pay. At n = 1024 the first two are 8 clusters of 16 and 16 of 8, which
// the H200 does not hold at once, so 128 x 128 tiles run there (8 clusters of 8, 64 SMs). 256 x 64 tiles
// (16 warps of 16 x 2, 4 clusters of 16) fit at n = 1024 but took 180.9 against 163.5 µs (run170).
struct TileInfo {
  const char* name;
  int rows, cols, threads;
};
template <class S>
constexpr TileInfo tile_info(const char* name) {
  return {name, S::kRows, S::kCols, S::kThreads};
}
constexpr TileInfo kTiles[] = {tile_info<Tile128x64>("128x64"), tile_info<Tile64x128>("64x128"),
                               tile_info<Tile128x128>("128x128")};
constexpr int kTileKinds = sizeof(kTiles) / sizeof(kTiles[0]);

// f(shape) with tile `tile`'s shape, its EVEN instance where `even`.
template <typename F>
void with_tile(int tile, bool even, F&& f) {
  const auto pick = [&](auto sh) {
    if (even) {
      f(typename decltype(sh)::Even{});
    } else {
      f(sh);
    }
  };
  switch (tile) {
    case 0: pick(Tile128x64{}); break;
    case 1: pick(Tile64x128{}); break;
    default: pick(Tile128x128{}); break;
  }
}

// UNIMIXER_SINKHORN_CUDA_TILE: 'auto' (-1) or a tile's name (its index).
int tile_setting() {
  const char* env = std::getenv("UNIMIXER_SINKHORN_CUDA_TILE");
  const std::string mode = env == nullptr || *env == '\0' ? "auto" : env;
  if (mode == "auto") return -1;
  for (int t = 0; t < kTileKinds; ++t) {
    if (mode == kTiles[t].name) return t;
  }
  TORCH_CHECK(false, "UNIMIXER_SINKHORN_CUDA_TILE: expected 'auto', '128x64', '64x128' or '128x128', got '", mode,
              "'");
  return -1;
}

struct Plan {
  int tile, n_rt, n_ct;
  bool even;  // n a multiple of the tile's rows and columns: the kernels' EVEN instance
};

cudaLaunchConfig_t launch_config(const Plan& plan, int64_t n_mat, cudaLaunchAttribute* attr, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(plan.n_rt * plan.n_ct), static_cast<unsigned>(n_mat), 1);
  config.blockDim = dim3(static_cast<unsigned>(kTiles[plan.tile].threads), 1, 1);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(plan.n_ct);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  return config;
}

// Clusters of `kernel` the device holds at once with this plan's block and cluster shape (it does not
// depend on the grid). Queried once per kernel, cluster size and device, on the stream the launch
// uses: a query on the legacy default stream would break a CUDA graph capture in progress. Clusters
// of more than 8 blocks are allowed on the kernel first (non-portable sizes).
template <typename K>
int clusters_at_once(K kernel, const Plan& plan, int64_t n_mat, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, int> known;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), plan.n_ct, device);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  if (plan.n_ct > 8) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t config = launch_config(plan, n_mat, attr, stream);
  int clusters = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
  known.emplace(key, clusters);
  return clusters;
}

// The first plan whose clusters all fit at once (`fits(tile, plan)` counts the clusters that do), or
// none, with what was tried in `tried`.
template <typename Fits>
std::optional<Plan> find_plan(int n, int64_t n_mat, Fits&& fits, std::string& tried) {
  const int setting = tile_setting();
  for (int tile = 0; tile < kTileKinds; ++tile) {
    if (setting >= 0 && tile != setting) continue;
    const Plan plan{tile, static_cast<int>(ceil_div(n, kTiles[tile].rows)),
                    static_cast<int>(ceil_div(n, kTiles[tile].cols)),
                    n % kTiles[tile].rows == 0 && n % kTiles[tile].cols == 0};
    const int64_t needed = static_cast<int64_t>(plan.n_rt) * n_mat;
    const int fit = fits(tile, plan);
    if (fit >= needed) return plan;
    tried += std::string(" ") + kTiles[tile].name + ": " + std::to_string(needed) + " clusters of " +
             std::to_string(plan.n_ct) + " blocks needed, " + std::to_string(fit) + " fit;";
  }
  return std::nullopt;
}

// `fits(tile, plan)` for the kernel `kernel_of(shape)` returns for each shape.
template <typename KernelOf>
auto fits_of(KernelOf&& kernel_of, int64_t n_mat, cudaStream_t stream) {
  return [=](int tile, const Plan& plan) {
    int fit = 0;
    with_tile(tile, plan.even, [&](auto sh) { fit = clusters_at_once(kernel_of(sh), plan, n_mat, stream); });
    return fit;
  };
}

template <typename Fits>
Plan choose_plan(int n, int64_t n_mat, Fits&& fits, const char* direction) {
  std::string tried;
  const std::optional<Plan> plan = find_plan(n, n_mat, fits, tried);
  TORCH_CHECK(plan.has_value(), "sinkhorn (cuda backend, ", direction, "): the tiles of ", n_mat,
              " matrices of n = ", n, " do not all fit on the device at once (", tried,
              " ); use backend='triton' or 'reference', or fewer matrices per call");
  return *plan;
}

void check_logits(const at::Tensor& logits, int64_t iters, double tau, bool symmetric) {
  check_cuda(logits, "logits", logits);
  TORCH_CHECK(logits.dim() >= 2 && logits.size(-1) == logits.size(-2),
              "logits: expected a [..., n, n] tensor, got shape ", logits.sizes());
  TORCH_CHECK(logits.size(-1) <= kMaxN || (symmetric && logits.size(-1) <= paired::kMaxN),
              "logits: the cuda backend takes n <= ", kMaxN, " (a row band in one cluster), or symmetric logits of n <= ",
              paired::kMaxN, " (mirrored tiles kept once); got n = ", logits.size(-1),
              symmetric ? "" : " with symmetric=False", "; use backend='triton'");
  TORCH_CHECK(iters >= 1, "iters: expected >= 1, got ", iters);
  TORCH_CHECK(tau > 0.0, "tau: expected > 0, got ", tau);
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, logits.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, logits.get_device()));
  TORCH_CHECK(major >= 9, "sinkhorn (cuda backend): thread-block clusters need compute capability 9.0 or newer, the "
              "device has ", major, ".", minor, "; use backend='triton'");
}

at::Tensor as_batch(const at::Tensor& t) { return t.reshape({-1, t.size(-2), t.size(-1)}); }

// The tagged words of both copies, then (`flags`) a flag per tile, then a failure count per matrix; zeroed
// (tags start at 1).
struct Words {
  at::Tensor buffer;
  Word* copies;
  Word* flags;
  Word* fail;
};
Words words_for(const Plan& plan, int64_t n_mat, const at::TensorOptions& like, bool flags) {
  const int64_t tiles = static_cast<int64_t>(plan.n_rt) * plan.n_ct;
  const int64_t copies = n_mat * 2 * tiles * kTiles[plan.tile].cols, n_flags = flags ? n_mat * tiles : 0;
  Words w;
  w.buffer = at::zeros({copies + n_flags + n_mat}, like.dtype(at::kLong));
  w.copies = reinterpret_cast<Word*>(w.buffer.data_ptr<int64_t>());
  w.flags = flags ? w.copies + copies : nullptr;
  w.fail = w.copies + copies + n_flags;
  return w;
}

void check_fail(const Words& w, int64_t n_mat) {
  check_failures(w.buffer.narrow(0, w.buffer.size(0) - n_mat, n_mat), "sinkhorn (cuda backend)");
}

template <typename F>
void with_symmetric(bool symmetric, F&& f) {
  if (symmetric) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd(const at::Tensor& logits, double tau, int64_t iters,
                                                            bool symmetric) {
  check_logits(logits, iters, tau, symmetric);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = as_batch(logits);
  const int64_t n_mat = x.size(0);
  const int n = static_cast<int>(x.size(-1));
  const auto lead = logits.sizes().slice(0, logits.dim() - 2);
  std::vector<int64_t> pot(lead.begin(), lead.end());
  pot.push_back(iters);
  pot.push_back(n);
  if (n > kMaxN && n_mat > 0) {
    const auto [p, u, v] = paired::forward(x, tau, iters);
    return {p.view(logits.sizes()), u.view(pot), v.view(pot)};
  }
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor p = new_output({n_mat, n, n}, f32);
  at::Tensor u = new_output({n_mat, iters, n}, f32);
  at::Tensor v = new_output({n_mat, iters, n}, f32);
  if (n_mat > 0 && n > 0) {
    const float scale = static_cast<float>((symmetric ? 0.5 : 1.0) / tau);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    with_dtype(x.scalar_type(), "logits", [&](auto tag) {
      using T = decltype(tag);
      with_symmetric(symmetric, [&](auto sym) {
        constexpr bool S = decltype(sym)::value;
        const auto kernel_of = [](auto sh) { return sinkhorn_fwd_kernel<T, decltype(sh), S>; };
        const Plan plan = choose_plan(n, n_mat, fits_of(kernel_of, n_mat, stream), "forward");
        const Words w = words_for(plan, n_mat, x.options(), false);
        with_tile(plan.tile, plan.even, [&](auto sh) {
          cudaLaunchAttribute attr[1];
          const cudaLaunchConfig_t config = launch_config(plan, n_mat, attr, stream);
          C10_CUDA_CHECK(cudaLaunchKernelEx(&config, sinkhorn_fwd_kernel<T, decltype(sh), S>,
                                            static_cast<const T*>(x.data_ptr()), p.data_ptr<float>(),
                                            u.data_ptr<float>(), v.data_ptr<float>(), w.copies, w.fail, n,
                                            static_cast<int>(iters), plan.n_rt, plan.n_ct, x.stride(0), x.stride(1),
                                            x.stride(2), scale, vec_bits(x, nullptr)));
        });
        check_fail(w, n_mat);
      });
    });
  }
  return {p.view(logits.sizes()), u.view(pot), v.view(pot)};
}

namespace {

void check_bwd(const at::Tensor& dp, const at::Tensor& logits, const at::Tensor& u, const at::Tensor& v, double tau,
               int64_t iters, bool symmetric) {
  check_logits(logits, iters, tau, symmetric);
  check_cuda(dp, "dp", logits);
  check_cuda(u, "u", logits);
  check_cuda(v, "v", logits);
  TORCH_CHECK(dp.sizes() == logits.sizes(), "dp: expected shape ", logits.sizes(), ", got ", dp.sizes());
  TORCH_CHECK_TYPE(dp.scalar_type() == at::kFloat, "dp: expected float32 (the gradient of the fp32 P), got ",
                   dp.scalar_type());
  const int64_t n = logits.size(-1);
  const int64_t n_mat = n > 0 ? logits.numel() / (n * n) : 0;
  auto check_potentials = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, ": expected float32, got ", t.scalar_type());
    TORCH_CHECK(t.numel() == n_mat * iters * n, name, ": expected ", n_mat * iters * n,
                " elements (the forward's [..., iters, n] potentials), got shape ", t.sizes());
  };
  check_potentials(u, "u");
  check_potentials(v, "v");
}

// The backward's checked arguments as [n_mat, n, n] logits and dP and [n_mat, iters, n] potentials (under
// the logits' device guard).
struct BwdArgs {
  at::Tensor x, d, u3, v3;
  int64_t n, n_mat;
};

BwdArgs as_batches(const at::Tensor& dp, const at::Tensor& logits, const at::Tensor& u, const at::Tensor& v,
                   int64_t iters) {
  const int64_t n = logits.size(-1);
  const int64_t n_mat = n > 0 ? logits.numel() / (n * n) : 0;
  return {as_batch(logits), as_batch(dp), u.reshape({n_mat, iters, n}).contiguous(),
          v.reshape({n_mat, iters, n}).contiguous(), n, n_mat};
}

}  // namespace

at::Tensor sinkhorn_bwd(const at::Tensor& dp, const at::Tensor& logits, const at::Tensor& u, const at::Tensor& v,
                        double tau, int64_t iters, bool symmetric) {
  check_bwd(dp, logits, u, v, tau, iters, symmetric);
  const c10::cuda::CUDAGuard guard(logits.device());
  const BwdArgs b = as_batches(dp, logits, u, v, iters);
  const at::Tensor &x = b.x, &d = b.d, &u3 = b.u3, &v3 = b.v3;
  const int64_t n = b.n, n_mat = b.n_mat;
  at::Tensor dx = new_output({n_mat, n, n}, logits.options());
  if (n > kMaxN && n_mat > 0) {
    paired::backward(d, x, u3, v3, tau, iters, dx);
  } else if (n_mat > 0 && n > 0) {
    const float scale = static_cast<float>((symmetric ? 0.5 : 1.0) / tau);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    // the working gradient leaves registers only to be read transposed
    at::Tensor g = symmetric ? at::empty({n_mat, n, n}, logits.options().dtype(at::kFloat)) : at::Tensor();
    with_dtype(x.scalar_type(), "logits", [&](auto tag) {
      using T = decltype(tag);
      with_symmetric(symmetric, [&](auto sym) {
        constexpr bool S = decltype(sym)::value;
        const auto kernel_of = [](auto sh) { return sinkhorn_bwd_kernel<T, decltype(sh), S>; };
        const Plan plan = choose_plan(static_cast<int>(n), n_mat, fits_of(kernel_of, n_mat, stream), "backward");
        const Words w = words_for(plan, n_mat, x.options(), S);
        with_tile(plan.tile, plan.even, [&](auto sh) {
          cudaLaunchAttribute attr[1];
          const cudaLaunchConfig_t config = launch_config(plan, n_mat, attr, stream);
          C10_CUDA_CHECK(cudaLaunchKernelEx(
              &config, sinkhorn_bwd_kernel<T, decltype(sh), S>, static_cast<const T*>(x.data_ptr()),
              d.data_ptr<float>(), u3.data_ptr<float>(), v3.data_ptr<float>(), S ? g.data_ptr<float>() : nullptr,
              static_cast<T*>(dx.data_ptr()), w.copies, w.flags, w.fail, static_cast<int>(n), static_cast<int>(iters),
              plan.n_rt, plan.n_ct, x.stride(0), x.stride(1), x.stride(2), d.stride(0), d.stride(1), d.stride(2), scale,
              scale, vec_bits(x, &d)));
        });
        check_fail(w, n_mat);
      });
    });
  }
  return dx.view(logits.sizes());
}

void sinkhorn_bwd_(const at::Tensor& dp, const at::Tensor& logits, const at::Tensor& u, const at::Tensor& v,
                   double tau, int64_t iters, bool symmetric) {
  const auto overlaps = [&](const at::Tensor& t) {
    const auto status = at::get_overlap_status(logits, t);
    return status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
  };
  TORCH_CHECK(!overlaps(dp) && !overlaps(u) && !overlaps(v),
              "logits: sinkhorn_bwd_ writes the gradient over the logits, which share memory with dp, u or v; "
              "pass logits.clone()");
  if (logits.dim() >= 2 && logits.size(-1) > kMaxN && logits.is_contiguous()) {
    // the paired kernels write each unit's gradient over the blocks of the logits only it read
    check_bwd(dp, logits, u, v, tau, iters, symmetric);
    const c10::cuda::CUDAGuard guard(logits.device());
    const BwdArgs b = as_batches(dp, logits, u, v, iters);
    if (b.n_mat > 0) paired::backward(b.d, b.x, b.u3, b.v3, tau, iters, b.x);
    return;
  }
  // the clusters' symmetric backward reads other blocks' tiles of the logits: through a temporary
  logits.copy_(sinkhorn_bwd(dp, logits, u, v, tau, iters, symmetric));
}

std::vector<int64_t> sinkhorn_plan(const at::Tensor& logits, bool symmetric) {
  // no check raises here but the tile switch's (checked in Python first): this is the query the
  // Python side asks before a call the kernels would refuse
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(-1);
  const int64_t n_mat = n > 0 ? logits.numel() / (n * n) : 0;
  std::vector<int64_t> out{-1, -1};
  if (n_mat == 0 || n == 0 || n > kMaxN) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  with_dtype(logits.scalar_type(), "logits", [&](auto tag) {
    using T = decltype(tag);
    with_symmetric(symmetric, [&](auto sym) {
      constexpr bool S = decltype(sym)::value;
      std::string tried;
      const auto fwd_of = [](auto sh) { return sinkhorn_fwd_kernel<T, decltype(sh), S>; };
      const auto bwd_of = [](auto sh) { return sinkhorn_bwd_kernel<T, decltype(sh), S>; };
      const auto fwd = find_plan(static_cast<int>(n), n_mat, fits_of(fwd_of, n_mat, stream), tried);
      const auto bwd = find_plan(static_cast<int>(n), n_mat, fits_of(bwd_of, n_mat, stream), tried);
      out = {fwd ? fwd->tile : -1, bwd ? bwd->tile : -1};
    });
  });
  return out;
}

}  // namespace unimixer
