// Sinkhorn of large symmetric logits (n > 1024), forward and backward, one launch per direction: the
// `cuda` backend's path beyond sinkhorn.cu's clusters. The maths and the saved state are the Triton
// tiled kernels' (triton_kernels/sinkhorn.py, `_fwd_half`, `_bwd_half`, `_bwd_last`): log-domain, fp32,
// the potentials U, V [n_mat, K, n] saved (U[0], V[0] absolute, the later ones relative to them),
// every iterate recomputed from S0; the backward carries only G's sums from step to step, with the
// iterates' rounding residual, and forms G once at the end.
//
// Where S0 lives. S0 = (logits + logits^T) * scale is symmetric, so of each pair of mirrored 64 x 64
// tiles (I, J) only the one with I <= J is kept: a "unit". At n = 4096 the 2080 units (33 MB in fp32)
// are spread over 130 blocks of 16 warps, one block an SM, all resident for the whole call (a
// cooperative launch). A warp owns one unit for the call; a block keeps 12 of its units in shared
// memory and the other 4 ("streamed") in a workspace that stays in L2, with S0 transposed beside them.
// A lane holds two columns of its unit's tile and walks its 64 rows.
//
// Whole matrices (the logits, dP, P, dM) are read and written along their rows: a unit's block (J, I)
// goes through its tile transposed in place in shared memory (lanes swapping mirrored entries along
// diagonals, free of bank conflicts). A streamed unit forms S0 and S0 transposed in the workspace through
// two padded 32 x 32 quadrants of its own (over Smem, before its first use), all warps at once, and
// writes P's and dM's block (J, I) from the transposed copy (the backward's last pass writes dM there
// four rows at a time). The one exception: the backward's last pass reads dP's block (J, I) four entries
// of two rows a lane, as it needs it beside the tile's rows while the tile holds S0.
//
// A half-step runs over each unit twice: as the tile (A: rows in band I, columns in J) and as its
// mirror image (B: rows J, columns I), each entry formed from the same S0 value with the orientation's
// potentials. Sums along the tile's rows cross the warp's lanes (a halving reduction over 16 rows at a
// time); sums along its columns stay in a lane. A row sum of band b gets one partial from every unit
// touching b: "slot" (b, o) for the other band o. The unit writes its two partials as tagged words (an
// fp32 value and the step's tag in one 8-byte store, as sinkhorn.cu's column exchange), each block
// reduces up to 32 rows' partials (in a fixed order: deterministic) and publishes the results as
// tagged words too, which the warps wait for before the next half-step. Two copies of the partials
// suffice: a unit writes step s + 2's partials only after it read step s + 1's results for both of its
// bands, and the blocks that reduced those had read step s's partials of both bands first.
//
// Numerics: S0 rounded once (as sinkhorn.cu); each iterate exp2(((((S0 - u_1) - v_1) - U[j]) - V[j']) *
// log2(e)) as the Triton kernels' `t1 - u - v` (the form matters: subtracting u_1 + U[j] at once failed the
// tolerance rule on dominated rows), the product rounded (__fmul_rn), so that the backward's half-steps
// and its last pass form every E_col bit for bit alike. The last pass forms E_row(j + 1) as E_col(j) times
// exp(U[j] - U[j+1]) at the iterate's row (one exponential an entry and iteration instead of two), the
// factor folded into the coefficient r'_{j+1} by the reducing thread: a few ulps from the half-steps'
// E_row, inside the tolerance rule (dominated rows included). The last pass reads each index's (U[j],
// V[j], c_j, r'_j) from records the reducing threads write, made visible by a release of the last result
// and the warp's acquire of it.
//
// Residency and errors: the host (`plan`) and the Python side refuse what does not fit (more than 16
// units an SM, or more blocks than SMs to reduce the rows); a wait that gives up counts a failure, read
// with UNIMIXER_SINKHORN_CHECK=1, as in sinkhorn.cu.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include <ATen/ATen.h>

#include "common.cuh"
#include "sinkhorn_common.cuh"
#include "sinkhorn_paired.h"

namespace unimixer {
namespace paired {
namespace {

using namespace sk;  // NOLINT(build/namespaces): the shared device pieces

constexpr int kB = 64;                       // a unit's rows and columns (a band)
constexpr int kWarps = 16;                   // a block's units at most, one per warp
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kSmemUnits = 12;               // units in shared memory; a block's others in the workspace
constexpr int kStreamed = kWarps - kSmemUnits;
constexpr int kTile = kB * kB;               // floats of a unit
constexpr int kChunk = 16;                   // rows reduced across the lanes at once
constexpr int kChunks = kB / kChunk;
constexpr int kRedRows = 32;                 // rows a block reduces at most
constexpr int kGroups = kThreads / kRedRows; // threads reducing one row
constexpr int kSlotsPerThread = 5;           // partials a reducing thread reads at most
constexpr int kMaxBands = kGroups * kSlotsPerThread;
constexpr int kStageWords = 112;             // float4 a warp stages in the last pass (Smem, reused)
constexpr int kStageJ = kStageWords / 4 - 1; // iterations staged at once
static_assert(kMaxBands * kB >= kMaxN, "kMaxN");

struct Args {
  const void* x;
  int64_t xs0, xs1, xs2;
  const float* dp;
  int64_t ds0, ds1, ds2;
  float* P;      // [n_mat, n, n] fp32
  void* dx;      // [n_mat, n, n] logits' dtype
  float* U;      // [n_mat, K, n]
  float* V;
  float* ws;     // the streamed units' tiles, then their transposes: [2, grid, kStreamed, kTile]
  Word* parts;   // [2, n_mat, nb, nb, kB] tagged partials
  Word* vecs;    // [2K, n_mat * n] tagged results of the half-steps
  float4* rec;   // backward: [n_mat, K, n] (U[j], V[j] relative, c_j, r'_j) for the last pass
  Word* fail;
  int n, K, nb, n_mat, per, units, rpb, vec;
  float scale, grad_scale;
};

struct Smem {
  float4 cache[kWarps][kB];                  // per warp: band I's potentials (u_1, v_1, two relative ones)
  float coef[kWarps][kB];                    // per warp: band I's coefficients (the backward's c_k or r_k)
  float2 red[2][kGroups][kRedRows];          // the reduction's group partials (double-buffered by step)
};
static_assert(sizeof(Smem) >= sizeof(float4) * kStageWords * kWarps, "the last pass's staging");

// One warp's unit: matrix, bands I <= J, and where its S0 tile lives.
struct Unit {
  int lane, warp;
  bool has, diag;
  int64_t mat;
  int rI, rJ;  // first row of bands I and J
  int n;
  float* tile;
  float* tileT;  // a streamed unit's S0 transposed (the backward's last pass: dM's) in the workspace; null
                 // for a unit in shared memory
  __device__ int colJ(int jj) const { return rJ + 2 * lane + jj; }      // this lane's columns (band J)
  __device__ int rowI(int i) const { return rI + i; }
  __device__ bool okJ(int jj) const { return colJ(jj) < n; }
  __device__ bool okI(int i) const { return rowI(i) < n; }
  // rows of band I this lane holds after a cross-lane reduction of chunk c
  __device__ int red_row(int c) const { return c * kChunk + (lane >> 1); }
};

__device__ Unit unit_of(const Args& a, float* smem_tiles) {
  Unit u;
  u.lane = threadIdx.x % kWarpSize;
  u.warp = threadIdx.x / kWarpSize;
  u.n = a.n;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * a.per + u.warp;
  u.has = u.warp < a.per && idx < a.units;
  const int nu = a.nb * (a.nb + 1) / 2;
  int64_t r = u.has ? idx % nu : 0;
  u.mat = u.has ? idx / nu : 0;
  int I = 0;
  while (r >= a.nb - I) {  // units in row-major order of (I, J), I <= J
    r -= a.nb - I;
    ++I;
  }
  const int J = I + static_cast<int>(r);
  u.diag = I == J;
  u.rI = I * kB;
  u.rJ = J * kB;
  const int64_t streamed_at = (static_cast<int64_t>(blockIdx.x) * kStreamed + (u.warp - kSmemUnits)) * kTile;
  u.tile = u.warp < kSmemUnits ? smem_tiles + u.warp * kTile : a.ws + streamed_at;
  u.tileT = u.warp < kSmemUnits ? nullptr : a.ws + static_cast<int64_t>(gridDim.x) * kStreamed * kTile + streamed_at;
  return u;
}

// The sums of a cross-lane partial w[16] (rows c * 16 .. of chunk c, this lane's two columns summed):
// the total of row red_row(c) over the warp, in every lane (lanes l and l ^ 1 hold the same row).
template <bool MAX>
__device__ __forceinline__ float reduce_chunk(float (&w)[kChunk], int lane) {
  halve_rows<MAX, kChunk / 2, kWarpSize / 2>(w, lane);
  return combine(MAX, w[0], __shfl_xor_sync(kFull, w[0], 1));
}

// v[c] for a chunk index c known only at run time, without moving v to local memory.
__device__ __forceinline__ float pick(const float (&v)[kChunks], int c) {
  float r = v[0];
#pragma unroll
  for (int k = 1; k < kChunks; ++k) r = k == c ? v[k] : r;
  return r;
}

// One pass over the rows of a tile (the unit's S0 or its transpose). For row i (r = i % 16, known at
// compile time), f(i, r, x0, x1, cache, px, py) gives this lane's share of NX cross-lane sums (px[k],
// its two entries combined) and NY in-lane sums (py[k][jj], column jj).
// Returns xs[k][c] (row red_row(c)'s total) and ys[k][jj] (this lane's column totals). MAX: maxima.
template <bool MAX, int NX, int NY, class F>
__device__ __forceinline__ void pass(const Unit& u, const float* tile, const float4* cache, F&& f,
                                     float (&xs)[NX][kChunks], float (&ys)[NY][2]) {
  const float none = MAX ? -INFINITY : 0.f;
#pragma unroll
  for (int k = 0; k < NY; ++k) ys[k][0] = ys[k][1] = none;
#pragma unroll
  for (int k = 0; k < NX; ++k) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) xs[k][c] = none;
  }
#pragma unroll 1
  for (int c = 0; c < kChunks; ++c) {
    float w[NX][kChunk];
#pragma unroll
    for (int r = 0; r < kChunk; ++r) {
      const int i = c * kChunk + r;
      const float2 x = *reinterpret_cast<const float2*>(tile + i * kB + 2 * u.lane);
      float px[NX], py[NY][2];
      f(i, r, x.x, x.y, cache[i], px, py);
#pragma unroll
      for (int k = 0; k < NX; ++k) w[k][r] = px[k];
#pragma unroll
      for (int k = 0; k < NY; ++k) {
        ys[k][0] = combine(MAX, ys[k][0], py[k][0]);
        ys[k][1] = combine(MAX, ys[k][1], py[k][1]);
      }
    }
#pragma unroll
    for (int k = 0; k < NX; ++k) {
      const float total = reduce_chunk<MAX>(w[k], u.lane);
#pragma unroll
      for (int cc = 0; cc < kChunks; ++cc) xs[k][cc] = cc == c ? total : xs[k][cc];  // registers, not a runtime index
    }
  }
}

// Partials of step s: slot (b, o) holds the sums over band o of band b's rows (the diagonal unit's slot
// is one, so it publishes one orientation's).
__device__ __forceinline__ Word* slot(const Args& a, int s, int64_t mat, int b, int o) {
  return a.parts + ((((static_cast<int64_t>(s % 2) * a.n_mat + mat) * a.nb + b) * a.nb + o) * kB);
}
// A cross-lane result (slot (I, J), rows of band I).
__device__ void publish_x(const Args& a, const Unit& u, int s, const float (&xs)[kChunks]) {
  Word* p = slot(a, s, u.mat, u.rI / kB, u.rJ / kB);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    if ((u.lane & 1) == (c & 1)) store_word(p + u.red_row(c), tagged(xs[c], s + 1));
  }
}
// An in-lane result (this lane's indices 2 lane, 2 lane + 1 of the band starting at row b) into slot
// (b, o) of step s.
__device__ void publish_lanes(const Args& a, const Unit& u, int s, int b, int o, const float (&ys)[2]) {
  Word* p = slot(a, s, u.mat, b / kB, o / kB);
  store_word(p + 2 * u.lane, tagged(ys[0], s + 1));
  store_word(p + 2 * u.lane + 1, tagged(ys[1], s + 1));
}

// A cross-lane result (row red_row(c) of chunk c in lanes 2 (row % 16) and that + 1) in lane layout:
// out[jj] the total of row 2 lane + jj.
__device__ __forceinline__ void to_lanes(const float (&xs)[kChunks], int lane, float (&out)[2]) {
#pragma unroll
  for (int jj = 0; jj < 2; ++jj) {
    const int src = (4 * lane + 2 * jj) % kWarpSize;
    float v = 0.f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const float t = __shfl_sync(kFull, xs[c], src);
      v = c == lane / 8 ? t : v;
    }
    out[jj] = v;
  }
}

// Results s[k] of the half-steps at indices idx[k] of matrix `mat`, waited for (0 outside the matrix or
// for s[k] < 0). Every read is issued before the first wait, so that they are in flight together.
template <int N>
__device__ __forceinline__ void fetch(const Args& a, int64_t mat, const int (&s)[N], const int (&idx)[N],
                                      float (&out)[N]) {
  const Word* p[N];
  Word w[N];
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const bool live = s[k] >= 0 && idx[k] < a.n;
    p[k] = live ? a.vecs + static_cast<int64_t>(s[k]) * a.n_mat * a.n + mat * a.n + idx[k] : nullptr;
    w[k] = live ? load_word(p[k]) : 0;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) {
    out[k] = p[k] != nullptr ? __uint_as_float(static_cast<unsigned>(wait_tag<load_word>(p[k], s[k] + 1, w[k], a.fail)))
                             : 0.f;
  }
}

// Saved potential row k of U or V (the backward's inputs) at idx; 0 outside the matrix or for k < 0.
__device__ __forceinline__ float saved(const Args& a, const float* t, int k, int64_t mat, int idx) {
  return (k < 0 || idx >= a.n) ? 0.f : __ldg(t + (mat * a.K + k) * a.n + idx);
}

// Band I's values at rows 2 lane, 2 lane + 1 (this lane's) into the warp's cache, after every lane is
// done with the previous contents.
__device__ __forceinline__ void fill_cache(const Unit& u, Smem& sm, const float (&u1)[2], const float (&v1)[2],
                                           const float (&pz)[2], const float (&pw)[2], const float (&coef)[2]) {
  __syncwarp();
#pragma unroll
  for (int jj = 0; jj < 2; ++jj) {
    sm.cache[u.warp][2 * u.lane + jj] = make_float4(u1[jj], v1[jj], pz[jj], pw[jj]);
    sm.coef[u.warp][2 * u.lane + jj] = coef[jj];
  }
  __syncwarp();
}

// An iterate's exponent in log2 units: (((S0 - u_1[row]) - v_1[col]) - pr[row]) - pc[col], as the Triton
// kernels' `t1 - u - v` (pr, pc relative potentials; 0 where a step has none), the product rounded.
__device__ __forceinline__ float iterate(float x, float u1, float v1, float pr, float pc) {
  return __fmul_rn((((x - u1) - v1) - pr) - pc, kLog2e);
}

// The block's share of the reduction of step s: rows blockIdx.x * rpb .. of the flattened [n_mat * n],
// each over its nb slots. HOW: 0 log-sum-exp of partial log-sum-exps, 1 log of a sum, 2 a sum plus the
// result of step s - 2 (`carry`, kept by the thread that finishes the row).
template <int HOW>
__device__ void reduce_step(const Args& a, Smem& sm, int s, float (&carry)[2], float* out_row) {
  const int t = threadIdx.x, row = t % kRedRows, g = t / kRedRows;
  const int64_t gr = static_cast<int64_t>(blockIdx.x) * a.rpb + row;
  const bool live = row < a.rpb && gr < static_cast<int64_t>(a.n_mat) * a.n;
  const int64_t mat = live ? gr / a.n : 0;
  const int r = live ? static_cast<int>(gr % a.n) : 0;
  const Word* base = slot(a, s, mat, r / kB, 0) + r % kB;
  Word w[kSlotsPerThread];
#pragma unroll
  for (int m = 0; m < kSlotsPerThread; ++m) {
    const int o = g + m * kGroups;
    w[m] = live && o < a.nb ? load_word(base + static_cast<int64_t>(o) * kB) : tagged(0.f, s + 1);
  }
  float2 part;
  if constexpr (HOW == 0) {
    float v[kSlotsPerThread], mx = -INFINITY;
#pragma unroll
    for (int m = 0; m < kSlotsPerThread; ++m) {
      const int o = g + m * kGroups;
      w[m] = wait_tag<load_word>(base + static_cast<int64_t>(o) * kB, s + 1, w[m], a.fail);
      v[m] = live && o < a.nb ? __uint_as_float(static_cast<unsigned>(w[m])) : -INFINITY;
      mx = fmaxf(mx, v[m]);
    }
    const float sh = lse_shift(mx);
    float sum = 0.f;
#pragma unroll
    for (int m = 0; m < kSlotsPerThread; ++m) sum += ex2_ftz((v[m] - sh) * kLog2e);
    part = make_float2(mx, sum);
  } else {
    float sum = 0.f;
#pragma unroll
    for (int m = 0; m < kSlotsPerThread; ++m) {
      const int o = g + m * kGroups;
      w[m] = wait_tag<load_word>(base + static_cast<int64_t>(o) * kB, s + 1, w[m], a.fail);
      sum += __uint_as_float(static_cast<unsigned>(w[m]));  // 0 for slots beyond nb
    }
    part = make_float2(sum, 0.f);
  }
  sm.red[s % 2][g][row] = part;
  __syncthreads();
  if (g != 0 || !live) return;
  float res;
  if constexpr (HOW == 0) {
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < kGroups; ++k) mx = fmaxf(mx, sm.red[s % 2][k][row].x);
    const float sh = lse_shift(mx);
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kGroups; ++k) {
      const float2 p = sm.red[s % 2][k][row];
      sum += p.x == -INFINITY ? 0.f : p.y * ex2_ftz((p.x - sh) * kLog2e);
    }
    res = lse_finish(sh, sum);
  } else {
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kGroups; ++k) sum += sm.red[s % 2][k][row].x;
    if constexpr (HOW == 1) {
      res = lg2(sum > 0.f ? sum : 1.f) * kLn2;
    } else {
      res = s >= 2 ? sum + carry[s % 2] : sum;
      carry[s % 2] = res;
      if (s % 2 == 1) {  // r_j: the last pass's record (j's relative potentials, c_j from step s - 1, r'_j)
        const int j = a.K - 1 - s / 2;
        const int64_t at = (mat * a.K + j) * a.n + r;
        const float uj = j >= 1 ? __ldg(a.U + at) : 0.f, up = j >= 2 ? __ldg(a.U + at - a.n) : 0.f;
        // r'_j = r_j exp(U[j-1] - U[j]) (E_row(j) = E_col(j-1) times that factor), r_0 as it is. The
        // factor is at most n^2: a row step moves a potential by log of a row sum of a matrix whose
        // columns sum to 1 and whose rows did before its column step, between log(1 / n^2) and log n
        const float rp = j == 0 ? res : res * ex2_ftz(__fmul_rn(up - uj, kLog2e));
        a.rec[at] = make_float4(uj, j >= 1 ? __ldg(a.V + at) : 0.f, carry[(s - 1) % 2], rp);
      }
    }
  }
  Word* dst = a.vecs + static_cast<int64_t>(s) * a.n_mat * a.n + gr;
  if (HOW == 2 && s == 2 * a.K - 1) {
    store_word_release(dst, tagged(res, s + 1));  // after the records: the last pass acquires them through it
  } else {
    store_word(dst, tagged(res, s + 1));
  }
  if (out_row != nullptr) out_row[(mat * a.K + s / 2) * a.n + r] = res;
}

// f(t[i][j], t[j][i]) for every pair of mirrored entries of the warp's 64 x 64 tile t (shared memory),
// the diagonal's with itself: f(p, q) updates both in place (a swap transposes the tile). Lane l takes
// (l, m) along the diagonals m = l + k (mod 32) of the 32 x 32 blocks, so that both accesses of a step
// hit 32 distinct banks; every pair is taken once, by one lane: no step waits for another lane's.
template <class F>
__device__ void pair_tile(float* t, int lane, F&& f) {
  constexpr int kBatch = 8;  // steps whose reads are in flight together (their entries are distinct)
  const auto steps = [&](auto&& at, int k0, int k1) {
    for (int k = k0; k < k1; k += kBatch) {
      float* p[kBatch];
      float* q[kBatch];
      float x[kBatch], y[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        at(k + b, p[b], q[b]);
        x[b] = p[b] != nullptr ? *p[b] : 0.f;
        y[b] = p[b] != nullptr ? *q[b] : 0.f;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (p[b] == nullptr) continue;
        f(x[b], y[b]);
        *p[b] = x[b];
        *q[b] = y[b];
      }
    }
  };
  __syncwarp();
  steps([&](int k, float*& p, float*& q) {  // blocks (0, 1) and (1, 0)
    const int m = (lane + k) & 31;
    p = t + lane * kB + 32 + m;
    q = t + (32 + m) * kB + lane;
  }, 0, 32);
#pragma unroll
  for (int d = 0; d < kB; d += 32) {  // the diagonal blocks: the pair at distance 16 taken by its lower lane
    steps([&](int k, float*& p, float*& q) {
      const int m = (lane + k) & 31;
      const bool take = k < 16 || (k == 16 && lane < 16);
      p = take ? t + (d + lane) * kB + d + m : nullptr;
      q = t + (d + m) * kB + d + lane;
    }, 0, 24);
  }
  __syncwarp();
}
__device__ __forceinline__ void transpose_tile(float* t, int lane) {
  pair_tile(t, lane, [](float& p, float& q) {
    const float x = p;
    p = q;
    q = x;
  });
}

// A streamed unit (warp w >= kSmemUnits) forms its tile through two 32 x 32 quadrants of its own in
// shared memory, rows padded to 33 floats (a quadrant's row and its column both hit 32 distinct banks),
// placed over Smem, which no warp touches before the block's units are loaded.
constexpr int kQuad = 32;
constexpr int kQuadRow = kQuad + 1;
constexpr int kQuadFloats = kQuad * kQuadRow;
constexpr int kScratchFloats = 2 * kQuadFloats;  // a streamed unit's
constexpr size_t kSmemBytes = sizeof(float) * kSmemUnits * kTile +
                              std::max(sizeof(Smem), sizeof(float) * kStreamed * kScratchFloats);
static_assert(kSmemBytes <= 227 * 1024, "sm_90's shared memory a block");
__device__ __forceinline__ bool streamed(const Unit& u) { return u.warp >= kSmemUnits; }

// Rows row0 .. row0 + 63 of the [n, n] matrix m, columns col0 + 2 lane + jj: f(i, tile row i's two
// entries of this lane) for each row i of the tile t.
template <typename T, class F>
__device__ __forceinline__ void store_rows(const Unit& u, T* m, bool vec, int row0, int col0, const float* t, F&& f) {
  constexpr int kRows = 16;  // rows of t read before the first store (which t might alias, as far as the compiler knows)
  const int col = col0 + 2 * u.lane;
  for (int i0 = 0; i0 < kB && row0 + i0 < u.n; i0 += kRows) {
    float2 x[kRows];
#pragma unroll
    for (int q = 0; q < kRows; ++q) x[q] = *reinterpret_cast<const float2*>(t + (i0 + q) * kB + 2 * u.lane);
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      const int row = row0 + i0 + q;
      if (row >= u.n) break;
      const float2 v = f(i0 + q, x[q]);
      T* dst = m + static_cast<int64_t>(row) * u.n + col;
      if (vec && col + 1 < u.n) {
        const float pair[2] = {v.x, v.y};
        store_run<T, 2>(dst, pair);
      } else {
        if (col < u.n) dst[0] = static_cast<T>(v.x);
        if (col + 1 < u.n) dst[1] = static_cast<T>(v.y);
      }
    }
  }
}

// Entries (row, col0 + 2 lane), (row, col0 + 2 lane + 1) of logits x (0 outside the matrix).
template <typename T>
__device__ __forceinline__ void read_pair(const Args& a, const T* x, bool vec, int row, int col, float (&v)[2]) {
  if (vec && row < a.n && col + 1 < a.n) {
    load_run<T, 2>(x + row * a.xs1 + col, v);
  } else {
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      v[jj] = row < a.n && col + jj < a.n ? static_cast<float>(x[row * a.xs1 + (col + jj) * a.xs2]) : 0.f;
    }
  }
}

// S0 of a unit in shared memory into its tile: (x[i][j] + x[j][i]) * scale, -inf outside the matrix.
// Both blocks are read along their rows, sixteen rows in flight: x's block (J, I) into the tile,
// transposed there in place, then added to block (I, J)'s rows.
template <typename T>
__device__ void load_unit(const Args& a, const Unit& u) {
  constexpr int kRows = 16;
  const T* x = static_cast<const T*>(a.x) + u.mat * a.xs0;
  const bool vec = a.vec & kVecLogits;
  for (int r0 = 0; r0 < kB; r0 += kRows) {
    float v[kRows][2];
#pragma unroll
    for (int q = 0; q < kRows; ++q) read_pair(a, x, vec, u.rJ + r0 + q, u.rI + 2 * u.lane, v[q]);
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      *reinterpret_cast<float2*>(u.tile + (r0 + q) * kB + 2 * u.lane) = make_float2(v[q][0], v[q][1]);
    }
  }
  transpose_tile(u.tile, u.lane);  // tile[i][j] = x[rJ + j][rI + i]
  for (int i0 = 0; i0 < kB; i0 += kRows) {
    float v[kRows][2];
#pragma unroll
    for (int q = 0; q < kRows; ++q) read_pair(a, x, vec, u.rowI(i0 + q), u.colJ(0), v[q]);
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      float2* p = reinterpret_cast<float2*>(u.tile + (i0 + q) * kB + 2 * u.lane);
      const float2 t = *p;
      float2 s;
      s.x = u.okI(i0 + q) && u.okJ(0) ? __fmul_rn(__fadd_rn(v[q][0], t.x), a.scale) : -INFINITY;
      s.y = u.okI(i0 + q) && u.okJ(1) ? __fmul_rn(__fadd_rn(v[q][1], t.y), a.scale) : -INFINITY;
      *p = s;
    }
  }
  __syncwarp();
}

// S0 of a streamed unit into its tile and, transposed, its tileT (both in the workspace), a quadrant
// (rows i0 .., columns j0 .. of the tile) at a time: x's blocks (I, J) and (J, I) read along their rows
// into the quadrants qa and qb (lane l: column l), then tile[i0 + r][j0 + l] = qa[r][l] + qb[l][r] and
// tileT[j0 + r][i0 + l] = qa[l][r] + qb[r][l], each formed and rounded as load_unit's.
template <typename T>
__device__ void load_streamed(const Args& a, const Unit& u, float* qa, float* qb) {
  constexpr int kRows = 16;
  const T* x = static_cast<const T*>(a.x) + u.mat * a.xs0;
  const auto at = [&](int row, int col) {
    return row < a.n && col < a.n ? static_cast<float>(x[row * a.xs1 + col * a.xs2]) : 0.f;
  };
  const auto s0 = [&](bool ok, float direct, float mirrored) {
    return ok ? __fmul_rn(__fadd_rn(direct, mirrored), a.scale) : -INFINITY;
  };
#pragma unroll 1
  for (int i0 = 0; i0 < kB; i0 += kQuad) {
#pragma unroll 1
    for (int j0 = 0; j0 < kB; j0 += kQuad) {
#pragma unroll 1
      for (int r0 = 0; r0 < kQuad; r0 += kRows) {
        float va[kRows], vb[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          va[r] = at(u.rI + i0 + r0 + r, u.rJ + j0 + u.lane);
          vb[r] = at(u.rJ + j0 + r0 + r, u.rI + i0 + u.lane);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          qa[(r0 + r) * kQuadRow + u.lane] = va[r];
          qb[(r0 + r) * kQuadRow + u.lane] = vb[r];
        }
      }
      __syncwarp();
      const bool lane_i = u.okI(i0 + u.lane), lane_j = u.rJ + j0 + u.lane < a.n;
#pragma unroll 4
      for (int r = 0; r < kQuad; ++r) {
        const float ta = qa[r * kQuadRow + u.lane], tb = qb[u.lane * kQuadRow + r];
        const float sa = qa[u.lane * kQuadRow + r], sb = qb[r * kQuadRow + u.lane];
        u.tile[(i0 + r) * kB + j0 + u.lane] = s0(u.okI(i0 + r) && lane_j, ta, tb);
        u.tileT[(j0 + r) * kB + i0 + u.lane] = s0(lane_i && u.rJ + j0 + r < a.n, sa, sb);
      }
      __syncwarp();
    }
  }
}

// S0 transposed (rows of band J): a shared tile transposed in place (end_transposed undoes it), a
// streamed unit's copy in the workspace.
__device__ __forceinline__ const float* begin_transposed(const Unit& u) {
  if (u.tileT != nullptr) return u.tileT;
  transpose_tile(u.tile, u.lane);
  return u.tile;
}
__device__ __forceinline__ void end_transposed(const Unit& u) {
  if (u.tileT == nullptr) transpose_tile(u.tile, u.lane);
}

// Every unit of the block loaded, all warps at once (a streamed unit's quadrants over Smem). Every thread
// of the block calls it.
template <typename T>
__device__ void load_units(const Args& a, const Unit& u, float* smem) {
  if (u.has) {
    if (streamed(u)) {
      float* q = smem + kSmemUnits * kTile + (u.warp - kSmemUnits) * kScratchFloats;
      load_streamed<T>(a, u, q, q + kQuadFloats);
    } else {
      load_unit<T>(a, u);
    }
  }
  __syncthreads();
}

// R rows row0 .. row0 + R - 1 of a [n, n] matrix at `m` (strides s1, s2), this lane's two columns
// col0 + 2 lane + jj (0 outside the matrix), every read issued before the first is used.
template <int R>
__device__ __forceinline__ void read_rows(const Unit& u, const float* m, int64_t s1, int64_t s2, bool vec, int row0,
                                          int col0, float (&out)[R][2]) {
  const int col = col0 + 2 * u.lane;
#pragma unroll
  for (int q = 0; q < R; ++q) {
    const int row = row0 + q;
    if (vec && row < u.n && col + 1 < u.n) {
      load_run<float, 2>(m + row * s1 + col, out[q]);
    } else {
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) out[q][jj] = row < u.n && col + jj < u.n ? m[row * s1 + (col + jj) * s2] : 0.f;
    }
  }
}

// Four rows i0 .. i0 + 3 of band I of a [n, n] matrix at `m` (strides s1, s2): this lane's two columns
// of each (direct, dir[q][jj]) and its two rows' entries in those columns (transposed, tr[jj][q]).
__device__ void read_quad(const Unit& u, const float* m, int64_t s1, int64_t s2, bool vec, int i0, float (&dir)[4][2],
                          float (&tr)[2][4]) {
  read_rows(u, m, s1, s2, vec, u.rowI(i0), u.rJ, dir);
#pragma unroll
  for (int jj = 0; jj < 2; ++jj) {
    const int row = u.colJ(jj);
    if (vec && row < u.n && u.rowI(i0 + 3) < u.n) {
      load_run<float, 4>(m + row * s1 + u.rowI(i0), tr[jj]);
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) tr[jj][q] = row < u.n && u.okI(i0 + q) ? m[row * s1 + u.rowI(i0 + q) * s2] : 0.f;
    }
  }
}

// The same four rows written (rowI, colJ).
template <typename T>
__device__ void write_quad(const Unit& u, T* m, bool vec, int i0, const float (&dir)[4][2]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int row = u.rowI(i0 + q);
    if (row >= u.n) continue;
    if (vec && u.colJ(1) < u.n) {
      store_run<T, 2>(m + static_cast<int64_t>(row) * u.n + u.colJ(0), dir[q]);
    } else {
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        if (u.okJ(jj)) m[static_cast<int64_t>(row) * u.n + u.colJ(jj)] = static_cast<T>(dir[q][jj]);
      }
    }
  }
}

// A streamed diagonal unit's dM = (G_A + G_A^T) * gs into its tile (workspace), from G_A in the tile and
// G_A^T in tileT: this lane's entries only, as pair_tile's (p + q) * gs.
__device__ void symmetrize(const Unit& u, float gs) {
  constexpr int kRows = 16;
  for (int i0 = 0; i0 < kB; i0 += kRows) {
    float2 g[kRows], h[kRows];
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      g[q] = *reinterpret_cast<const float2*>(u.tile + (i0 + q) * kB + 2 * u.lane);
      h[q] = *reinterpret_cast<const float2*>(u.tileT + (i0 + q) * kB + 2 * u.lane);
    }
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      *reinterpret_cast<float2*>(u.tile + (i0 + q) * kB + 2 * u.lane) =
          make_float2((g[q].x + h[q].x) * gs, (g[q].y + h[q].y) * gs);
    }
  }
}

// --- forward -----------------------------------------------------------------------------------
//
// As the Triton `_fwd_half`, with T1 = (S0 - u_1) - v_1: step s = 0: u_1 = LSE along the rows of S0;
// s = 1: v_1 = LSE along the columns of S0 - u_1 (both with maxima); s = 2k: U[k] = log of the row sums
// of exp(T1 - V[k-1]) (V[0] relative := 0); s = 2k + 1: V[k] = log of the column sums of exp(T1 - U[k]);
// result s is U[s / 2] (s even) or V[s / 2]. Then P = exp((T1 - U[K-1]) - V[K-1]) (relative; 0 at K = 1).
// A row step sums A along its rows (cross-lane) and B along its rows (in-lane: B's rows are the tile's
// columns); a column step the other way round.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) paired_fwd_kernel(const Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) float smem[];
  Smem& sm = *reinterpret_cast<Smem*>(smem + kSmemUnits * kTile);
  const Unit u = unit_of(a, smem);
  const float4* cache = sm.cache[u.warp];
  load_units<T>(a, u, smem);
  float carry[2] = {0.f, 0.f};
  // u_1, v_1 at band I's rows 2 lane + jj (for the cache) and band J's columns (this lane's)
  float u1I[2] = {0.f, 0.f}, v1I[2] = {0.f, 0.f}, u1J[2] = {0.f, 0.f}, v1J[2] = {0.f, 0.f};
  const float zero[2] = {0.f, 0.f};
  const int total = 2 * a.K;
  for (int s = 0; s < total; ++s) {
    const bool rows = s % 2 == 0;
    if (u.has) {
      const int iI0 = u.rI + 2 * u.lane, iJ0 = u.colJ(0);
      if (s == 1 || s == 2) {  // u_1, and from s = 2 on v_1 (0 before: step 1 sums exp(S0 - u_1))
        const int ss[4] = {0, 0, s - 1, s - 1}, at[4] = {iI0, iI0 + 1, iI0, iI0 + 1};
        const int js[4] = {0, 0, s - 1, s - 1}, jt[4] = {iJ0, iJ0 + 1, iJ0, iJ0 + 1};
        float r[4], c[4];
        fetch(a, u.mat, ss, at, r);
        fetch(a, u.mat, js, jt, c);
        u1I[0] = r[0], u1I[1] = r[1], u1J[0] = c[0], u1J[1] = c[1];
        if (s == 2) v1I[0] = r[2], v1I[1] = r[3], v1J[0] = c[2], v1J[1] = c[3];
      }
      // the step's relative potential (result s - 1 from s = 3 on): V[k-1] at the columns in row steps,
      // U[k] at the rows in column steps
      float potI[2] = {0.f, 0.f}, potJ[2] = {0.f, 0.f};
      if (s >= 3) {
        const int ss[4] = {s - 1, s - 1, s - 1, s - 1}, at[4] = {iI0, iI0 + 1, iJ0, iJ0 + 1};
        float p[4];
        fetch(a, u.mat, ss, at, p);
        potI[0] = p[0], potI[1] = p[1], potJ[0] = p[2], potJ[1] = p[3];
      }
      fill_cache(u, sm, u1I, v1I, potI, zero, zero);
      // A: ((S0 - u_1[I]) - v_1[J]) - pot, B: ((S0 - u_1[J]) - v_1[I]) - pot, pot at the columns (row
      // steps) or the rows (column steps); natural units
      const auto ta = [&](float x, int jj, float4 c) { return ((x - c.x) - v1J[jj]) - (rows ? potJ[jj] : c.z); };
      const auto tb = [&](float x, int jj, float4 c) { return ((x - u1J[jj]) - c.y) - (rows ? c.z : potJ[jj]); };
      float xs[1][kChunks], ys[1][2];
      if (s < 2) {
        // log-sum-exp: maxima first, then the sums of exponentials shifted by them
        float mx[1][kChunks], my[1][2];
        pass<true, 1, 1>(u, u.tile, cache, [&](int, int, float x0, float x1, float4 c, float (&px)[1],
                                               float (&py)[1][2]) {
          const float a0 = ta(x0, 0, c), a1 = ta(x1, 1, c), b0 = tb(x0, 0, c), b1 = tb(x1, 1, c);
          px[0] = rows ? fmaxf(a0, a1) : fmaxf(b0, b1);
          py[0][0] = rows ? b0 : a0;
          py[0][1] = rows ? b1 : a1;
        }, mx, my);
        float shx[kChunks], shy[2];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) shx[c] = lse_shift(mx[0][c]);
        shy[0] = lse_shift(my[0][0]);
        shy[1] = lse_shift(my[0][1]);
        pass<false, 1, 1>(u, u.tile, cache, [&](int i, int r, float x0, float x1, float4 c, float (&px)[1],
                                        float (&py)[1][2]) {
          const float m = __shfl_sync(kFull, pick(shx, i / kChunk), 2 * r);  // row i's maximum
          const float a0 = ta(x0, 0, c), a1 = ta(x1, 1, c), b0 = tb(x0, 0, c), b1 = tb(x1, 1, c);
          px[0] = rows ? ex2_ftz((a0 - m) * kLog2e) + ex2_ftz((a1 - m) * kLog2e)
                       : ex2_ftz((b0 - m) * kLog2e) + ex2_ftz((b1 - m) * kLog2e);
          py[0][0] = ex2_ftz(((rows ? b0 : a0) - shy[0]) * kLog2e);
          py[0][1] = ex2_ftz(((rows ? b1 : a1) - shy[1]) * kLog2e);
        }, xs, ys);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) xs[0][c] = lse_finish(shx[c], xs[0][c]);
        ys[0][0] = lse_finish(shy[0], ys[0][0]);
        ys[0][1] = lse_finish(shy[1], ys[0][1]);
      } else {
        pass<false, 1, 1>(u, u.tile, cache, [&](int, int, float x0, float x1, float4 c, float (&px)[1],
                                                float (&py)[1][2]) {
          const float a0 = ex2_ftz(__fmul_rn(ta(x0, 0, c), kLog2e)), a1 = ex2_ftz(__fmul_rn(ta(x1, 1, c), kLog2e));
          const float b0 = ex2_ftz(__fmul_rn(tb(x0, 0, c), kLog2e)), b1 = ex2_ftz(__fmul_rn(tb(x1, 1, c), kLog2e));
          px[0] = rows ? a0 + a1 : b0 + b1;
          py[0][0] = rows ? b0 : a0;
          py[0][1] = rows ? b1 : a1;
        }, xs, ys);
      }
      // the A partial (cross-lane in row steps, in-lane in column steps) and, off the diagonal, B's
      if (!u.diag || rows) publish_x(a, u, s, xs[0]);
      if (!u.diag || !rows) publish_lanes(a, u, s, u.rJ, u.rI, ys[0]);
    }
    float* out = rows ? a.U : a.V;
    if (s < 2) {
      reduce_step<0>(a, sm, s, carry, out);
    } else {
      reduce_step<1>(a, sm, s, carry, out);
    }
  }
  // P = exp((T1 - U[K-1]) - V[K-1]): block (I, J) along the tile's rows, then (off the diagonal) block
  // (J, I) along the rows of the tile transposed
  float uI[2] = {0.f, 0.f}, vI[2] = {0.f, 0.f}, uJ[2] = {0.f, 0.f}, vJ[2] = {0.f, 0.f};
  float* P = a.P + u.mat * a.n * a.n;
  const bool ovec = a.vec & kVecOut;
  // rows of band `rows` from tile t (its potentials in the cache), columns of band `cols` (this lane's v_1, V)
  const auto p_rows = [&](const float* t, int rows, int cols, const float (&v1c)[2], const float (&vc)[2]) {
    store_rows<float>(u, P, ovec, rows, cols, t, [&](int i, float2 x) {
      const float4 c = cache[i];
      return make_float2(ex2(iterate(x.x, c.x, v1c[0], c.z, vc[0])), ex2(iterate(x.y, c.x, v1c[1], c.z, vc[1])));
    });
  };
  if (u.has) {
    const int iI0 = u.rI + 2 * u.lane, iJ0 = u.colJ(0);
    if (a.K == 1) {  // v_1 (a row step would have fetched it)
      const int ss[4] = {1, 1, 1, 1}, at[4] = {iI0, iI0 + 1, iJ0, iJ0 + 1};
      float p[4];
      fetch(a, u.mat, ss, at, p);
      v1I[0] = p[0], v1I[1] = p[1], v1J[0] = p[2], v1J[1] = p[3];
    } else {
      const int ss[8] = {total - 2, total - 2, total - 1, total - 1, total - 2, total - 2, total - 1, total - 1};
      const int at[8] = {iI0, iI0 + 1, iI0, iI0 + 1, iJ0, iJ0 + 1, iJ0, iJ0 + 1};
      float p[8];
      fetch(a, u.mat, ss, at, p);
      uI[0] = p[0], uI[1] = p[1], vI[0] = p[2], vI[1] = p[3], uJ[0] = p[4], uJ[1] = p[5], vJ[0] = p[6], vJ[1] = p[7];
    }
    fill_cache(u, sm, u1I, v1I, uI, vI, zero);
    p_rows(u.tile, u.rI, u.rJ, v1J, vJ);
    if (!u.diag) {
      const float* t = begin_transposed(u);
      fill_cache(u, sm, u1J, v1J, uJ, vJ, zero);
      p_rows(t, u.rJ, u.rI, v1I, vI);
    }
  }
#endif
}

// --- backward ----------------------------------------------------------------------------------
//
// Results: s = 0: c_{K-1} = colsum(dP * P); s = 2(K-1-k) + 1: r_k (column step k); s = 2(K-k): c_{k-1}
// (row step k >= 1), so c_j is result 2(K-1-j) and r_j result 2(K-1-j) + 1. Iterates, with U[0], V[0]
// relative := 0: E_col(j) = exp((T1 - U[j]) - V[j]), E_row(j) = exp((T1 - U[j]) - V[j-1]) for j >= 1,
// E_row(0) = exp(S0 - u_1).
// Column step k: r_k = sum_tiles rowsum(-E_col(k) * c_k) + r_{k+1} (1 - rowsum(E_row(k+1))); the tile's
// share of the residual, -r_{k+1} * its own rowsum(E_row(k+1)), comes from `q`, kept in the lanes from
// the step before (at k = K-1 rowsum(dP * P) from step 0 instead, and no r_{k+1}); the reducing block
// adds r_{k+1}. Row step k: c_{k-1} = sum_tiles colsum(-E_row(k) * r_k) + c_k (1 - colsum(E_col(k))).
// Last: G = dP * P - sum_j (E_col(j) c_j + E_row(j) r_j), j = K-1 .. 0, column first; dM = (G + G^T) * gs.
// q of A and B: sums of A along its rows and of B along its columns are indexed by the tile's rows
// (cross-lane: qi), the others by its columns (in-lane: qj).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) paired_bwd_kernel(const Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) float smem[];
  Smem& sm = *reinterpret_cast<Smem*>(smem + kSmemUnits * kTile);
  const Unit u = unit_of(a, smem);
  const float4* cache = sm.cache[u.warp];
  const float* coef = sm.coef[u.warp];
  load_units<T>(a, u, smem);
  const int K = a.K, total = 2 * K;
  const int iI0 = u.rI + 2 * u.lane, iJ0 = u.colJ(0);
  float u1I[2], v1I[2], u1J[2], v1J[2];
#pragma unroll
  for (int jj = 0; jj < 2; ++jj) {
    u1I[jj] = saved(a, a.U, 0, u.mat, iI0 + jj);
    v1I[jj] = saved(a, a.V, 0, u.mat, iI0 + jj);
    u1J[jj] = saved(a, a.U, 0, u.mat, iJ0 + jj);
    v1J[jj] = saved(a, a.V, 0, u.mat, iJ0 + jj);
  }
  // relative potentials U[k], V[k] (0 at k = 0) at band I's rows 2 lane + jj and band J's columns
  const auto rel = [&](const float* t, int k, bool band_i, int jj) {
    return saved(a, t, k >= 1 ? k : -1, u.mat, (band_i ? iI0 : iJ0) + jj);
  };
  const float* dp = a.dp + u.mat * a.ds0;
  const bool dvec = a.vec & kVecGrad;
  float carry[2] = {0.f, 0.f};
  float qi[kChunks], qj[2];
  for (int s = 0; s < total; ++s) {
    if (u.has) {
      // the iterate: E_col(k) in step 0 (k = K-1) and column steps, E_row(k) in row steps
      const bool col = s % 2 == 1 || s == 0;
      const int k = s == 0 ? K - 1 : (col ? K - 1 - (s - 1) / 2 : K - s / 2);
      float prI[2], pcI[2], prJ[2], pcJ[2], cfI[2] = {0.f, 0.f}, cfJ[2] = {0.f, 0.f}, crI[kChunks], crJ[2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        prI[jj] = rel(a.U, k, true, jj);
        prJ[jj] = rel(a.U, k, false, jj);
        pcI[jj] = rel(a.V, col ? k : k - 1, true, jj);
        pcJ[jj] = rel(a.V, col ? k : k - 1, false, jj);
      }
      if (s >= 1) {  // the coefficient (result s - 1) and the residual's vector (result s - 2, from s = 2 on)
        const int c2 = s >= 2 ? s - 2 : -1;
        const int ss[10] = {s - 1, s - 1, s - 1, s - 1, c2, c2, c2, c2, c2, c2};
        const int at[10] = {iI0, iI0 + 1, iJ0, iJ0 + 1, u.rI + u.red_row(0), u.rI + u.red_row(1),
                            u.rI + u.red_row(2), u.rI + u.red_row(3), iJ0, iJ0 + 1};
        float v[10];
        fetch(a, u.mat, ss, at, v);
        cfI[0] = v[0], cfI[1] = v[1], cfJ[0] = v[2], cfJ[1] = v[3];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) crI[c] = v[4 + c];
        crJ[0] = v[8], crJ[1] = v[9];
      }
      fill_cache(u, sm, u1I, v1I, prI, pcI, cfI);
      // A: entry (row I, column J), B: (row J, column I)
      const auto ea = [&](float x, int jj, float4 c) { return ex2_ftz(iterate(x, c.x, v1J[jj], c.z, pcJ[jj])); };
      const auto eb = [&](float x, int jj, float4 c) { return ex2_ftz(iterate(x, u1J[jj], c.y, prJ[jj], c.w)); };
      if (s == 0) {
        // dP * P along the rows of A (the tile's, dP's block (I, J)): its row sums (q, band I, across the
        // lanes) and column sums (the partials of c_{K-1}, band J); then along the rows of B (the tile
        // transposed, dP's block (J, I), band J's potentials in the cache): q of band J and the partials
        // of band I. Every read of dP is along its rows.
        float dpr[kChunk][2], xa[1][kChunks], ya[1][2], xb[1][kChunks], yb[1][2];  // dP: a chunk's rows
        pass<false, 1, 1>(u, u.tile, cache, [&](int i, int r, float x0, float x1, float4 c, float (&px)[1],
                                                float (&py)[1][2]) {
          if (r == 0) read_rows(u, dp, a.ds1, a.ds2, dvec, u.rI + i, u.rJ, dpr);
          py[0][0] = dpr[r][0] * ea(x0, 0, c);
          py[0][1] = dpr[r][1] * ea(x1, 1, c);
          px[0] = py[0][0] + py[0][1];
        }, xa, ya);
        const float* tt = begin_transposed(u);
        fill_cache(u, sm, u1J, v1J, prJ, pcJ, cfJ);
        pass<false, 1, 1>(u, tt, cache, [&](int i, int r, float x0, float x1, float4 c, float (&px)[1],
                                            float (&py)[1][2]) {
          if (r == 0) read_rows(u, dp, a.ds1, a.ds2, dvec, u.rJ + i, u.rI, dpr);
          py[0][0] = dpr[r][0] * ex2_ftz(iterate(x0, c.x, v1I[0], c.z, pcI[0]));
          py[0][1] = dpr[r][1] * ex2_ftz(iterate(x1, c.x, v1I[1], c.z, pcI[1]));
          px[0] = py[0][0] + py[0][1];
        }, xb, yb);
        end_transposed(u);
        publish_lanes(a, u, s, u.rJ, u.rI, ya[0]);
        if (!u.diag) publish_lanes(a, u, s, u.rI, u.rJ, yb[0]);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) qi[c] = xa[0][c];
        to_lanes(xb[0], u.lane, qj);
      } else {
        // column step k (COL): coefficient c_k, the iterate's other orientation summed for q; row step k >= 1:
        // coefficient r_k. X is the orientation whose coefficient sits at the tile's columns (A in column
        // steps, B in row steps): -E * coefficient along its rows (cross-lane), E along its columns (q);
        // Y (the other) the same with the rows' coefficient, the other way round
        float xs[2][kChunks], ys[2][2];
        const auto step = [&](auto col_step) {
          constexpr bool COL = decltype(col_step)::value;
          pass<false, 2, 2>(u, u.tile, cache, [&](int i, int, float x0, float x1, float4 c, float (&px)[2],
                                          float (&py)[2][2]) {
            const float a0 = ea(x0, 0, c), a1 = ea(x1, 1, c), b0 = eb(x0, 0, c), b1 = eb(x1, 1, c);
            const float X0 = COL ? a0 : b0, X1 = COL ? a1 : b1, Y0 = COL ? b0 : a0, Y1 = COL ? b1 : a1;
            const float ci = coef[i];
            px[0] = __fmaf_rn(-X1, cfJ[1], -__fmul_rn(X0, cfJ[0]));
            px[1] = Y0 + Y1;
            py[0][0] = -__fmul_rn(Y0, ci);
            py[0][1] = -__fmul_rn(Y1, ci);
            py[1][0] = X0;
            py[1][1] = X1;
          }, xs, ys);
        };
        if (col) {
          step(std::true_type{});
        } else {
          step(std::false_type{});
        }
        // the carried residual: rowsum(dP * P) at the first column step, else minus the vector of step s - 2
        // (r_{k+1}, or c_k) times the q of the step before
#pragma unroll
        for (int c = 0; c < kChunks; ++c) xs[0][c] += s == 1 ? qi[c] : -crI[c] * qi[c];
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) ys[0][jj] += s == 1 ? qj[jj] : -crJ[jj] * qj[jj];
        // A's partial is cross-lane in column steps, in-lane in row steps; B's the other
        const bool a_cross = s % 2 == 1;
        if (!u.diag || a_cross) publish_x(a, u, s, xs[0]);
        if (!u.diag || !a_cross) publish_lanes(a, u, s, u.rJ, u.rI, ys[0]);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) qi[c] = xs[1][c];
        qj[0] = ys[1][0];
        qj[1] = ys[1][1];
      }
    }
    reduce_step<2>(a, sm, s, carry, nullptr);
  }
  __syncthreads();  // the last reduction's reads of `red` are done: the last pass stages records there
  T* dx = static_cast<T*>(a.dx) + u.mat * a.n * a.n;
  const bool ovec = a.vec & kVecOut;
  // the rest of dM from a shared tile t once it holds block (I, J)'s dM (dM is symmetric: block (J, I) is
  // its transpose), or the diagonal unit's G_A: (G_A + G_A^T) * grad_scale. A streamed unit's from tileT
  // (dM transposed) or, on the diagonal, its tile made symmetric
  const auto mirror = [&](float* t) {
    if (u.diag) {
      pair_tile(t, u.lane, [&](float& p, float& q) { p = q = (p + q) * a.grad_scale; });
    } else {
      transpose_tile(t, u.lane);
    }
    store_rows<T>(u, dx, ovec, u.rJ, u.rI, t, [](int, float2 v) { return v; });
  };
  if (u.has) {
    {  // the last result at this lane's indices, acquired: every record is written before it (reduce_step)
      const int ss[4] = {total - 1, total - 1, total - 1, total - 1}, at[4] = {iI0, iI0 + 1, iJ0, iJ0 + 1};
      float last[4];
      fetch(a, u.mat, ss, at, last);
      __threadfence();
      __syncwarp();
    }
    // G of both orientations, four rows at a time, then dM = (G_A + G_B) * grad_scale, written at block
    // (I, J) and kept in the tile for block (J, I) (the diagonal unit: G_A in the tile, then (G + G^T) *
    // grad_scale). G = dP * P - sum_j E_col(j) (c_j + r'_{j+1}) - E_row(0) r_0 with E_row(j + 1) =
    // E_col(j) exp(U[j] - U[j+1]) at the iterate's row: one exponential an entry and iteration.
    // Records (U[j], V[j], c_j, r'_j): the four rows' (the same in every lane) staged in shared memory
    // kStageJ iterations at a time, this lane's columns' read two iterations ahead
    const float4* rec = a.rec + u.mat * K * a.n;
    const auto record = [&](int j, int idx) {
      return j >= 0 && j < K && idx < a.n ? __ldcg(rec + static_cast<int64_t>(j) * a.n + idx)
                                          : make_float4(0.f, 0.f, 0.f, 0.f);
    };
    float4* stage = reinterpret_cast<float4*>(&sm) + u.warp * kStageWords;
    for (int i0 = 0; i0 < kB; i0 += 4) {
      float xv[4][2], ga[4][2], gb[2][4], u1r[4], t1a[4][2], t1b[4][2];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 x = *reinterpret_cast<const float2*>(u.tile + (i0 + q) * kB + 2 * u.lane);
        xv[q][0] = x.x;
        xv[q][1] = x.y;
        u1r[q] = saved(a, a.U, 0, u.mat, u.rowI(i0 + q));
        const float v1r = saved(a, a.V, 0, u.mat, u.rowI(i0 + q));
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          t1a[q][jj] = (xv[q][jj] - u1r[q]) - v1J[jj];
          t1b[q][jj] = (xv[q][jj] - u1J[jj]) - v1r;
        }
      }
      read_quad(u, dp, a.ds1, a.ds2, dvec, i0, ga, gb);  // dP, then G
      // this lane's columns' records j + 1, j, then j - 1 and j - 2 in flight
      float4 cn[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)}, c0[2], c1[2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        c0[jj] = record(K - 1, iJ0 + jj);
        c1[jj] = record(K - 2, iJ0 + jj);
      }
      for (int jhi = K - 1; jhi >= 0; jhi -= kStageJ) {
        // rows' records jlo .. jhi + 1 (record jhi + 1 for E_row(jhi + 1)) at stage[(j - jlo) * 4 + q]
        const int jlo = max(jhi - kStageJ + 1, 0), words = (jhi - jlo + 2) * 4;
        __syncwarp();
        for (int w = u.lane; w < words; w += kWarpSize) {
          stage[w] = record(jlo + w / 4, u.rowI(i0 + w % 4));
        }
        __syncwarp();
        for (int j = jhi; j >= jlo; --j) {
          float4 c2[2];  // two iterations ahead
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) c2[jj] = record(j - 2, iJ0 + jj);
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const float4 rr = stage[(j - jlo) * 4 + q];
            const float rn = stage[(j - jlo + 1) * 4 + q].w;  // r'_{j+1} at the row (0 at j = K - 1)
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) {
              // A: row rowI(q), column colJ(jj); B: row colJ(jj), column rowI(q)
              const float eca = ex2_ftz(__fmul_rn((t1a[q][jj] - rr.x) - c0[jj].y, kLog2e));
              const float ecb = ex2_ftz(__fmul_rn((t1b[q][jj] - c0[jj].x) - rr.y, kLog2e));
              if (j == K - 1) {
                ga[q][jj] = ga[q][jj] * eca;
                gb[jj][q] = gb[jj][q] * ecb;
              }
              ga[q][jj] = __fmaf_rn(-eca, c0[jj].z + rn, ga[q][jj]);
              gb[jj][q] = __fmaf_rn(-ecb, rr.z + cn[jj].w, gb[jj][q]);
            }
          }
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) {
            cn[jj] = c0[jj];
            c0[jj] = c1[jj];
            c1[jj] = c2[jj];
          }
        }
      }
      // E_row(0) = exp(S0 - u_1), with r_0 (record 0's: the rows' staged first, the columns' now in cn)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float r0 = stage[q].w;
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          ga[q][jj] = __fmaf_rn(-ex2_ftz(__fmul_rn(xv[q][jj] - u1r[q], kLog2e)), r0, ga[q][jj]);
          gb[jj][q] = __fmaf_rn(-ex2_ftz(__fmul_rn(xv[q][jj] - u1J[jj], kLog2e)), cn[jj].w, gb[jj][q]);
        }
      }
      // what block (J, I) is formed from: the diagonal unit's G_A, else dM (block (I, J) written now);
      // kept in the tile (its rows i0 .. i0 + 3, read above) and, by a streamed unit, transposed in tileT
      float keep[4][2];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) keep[q][jj] = u.diag ? ga[q][jj] : (ga[q][jj] + gb[jj][q]) * a.grad_scale;
      }
      if (!u.diag) write_quad<T>(u, dx, ovec, i0, keep);
      if (!streamed(u) || u.diag) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          *reinterpret_cast<float2*>(u.tile + (i0 + q) * kB + 2 * u.lane) = make_float2(keep[q][0], keep[q][1]);
        }
      }
      if (streamed(u)) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          *reinterpret_cast<float4*>(u.tileT + (2 * u.lane + jj) * kB + i0) =
              make_float4(keep[0][jj], keep[1][jj], keep[2][jj], keep[3][jj]);
        }
      }
    }
    if (streamed(u)) {
      __syncwarp();  // every lane's tile and tileT entries seen by the warp
      if (u.diag) symmetrize(u, a.grad_scale);
      store_rows<T>(u, dx, ovec, u.rJ, u.rI, u.diag ? u.tile : u.tileT, [](int, float2 v) { return v; });
    } else {
      mirror(u.tile);
    }
  }
#endif
}

// --- host --------------------------------------------------------------------------------------

struct Launch {
  int nb, per, grid, rpb, units;
  size_t smem;
  std::string refused;  // why it cannot run, "" if it can
};

Launch plan(int64_t n, int64_t n_mat, int sms) {
  Launch l{};
  l.nb = static_cast<int>(ceil_div(n, static_cast<int64_t>(kB)));
  const int64_t units = n_mat * l.nb * (l.nb + 1) / 2;
  if (n > kMaxN) {
    l.refused = "n = " + std::to_string(n) + " is above the paired kernels' " + std::to_string(kMaxN);
    return l;
  }
  const int64_t per = ceil_div(units, static_cast<int64_t>(sms));
  if (per > kWarps) {
    l.refused = std::to_string(n_mat) + " matrices of n = " + std::to_string(n) + " have " + std::to_string(units) +
                " mirrored pairs of 64 x 64 tiles, more than the " + std::to_string(kWarps * sms) +
                " the device's blocks hold (" + std::to_string(kWarps) + " per SM)";
    return l;
  }
  l.units = static_cast<int>(units);
  l.per = static_cast<int>(per);
  int64_t grid = ceil_div(units, per);
  grid = std::max(grid, ceil_div(n_mat * n, static_cast<int64_t>(kRedRows)));  // rows a block reduces
  if (grid > sms) {
    l.refused = std::to_string(n_mat) + " matrices of n = " + std::to_string(n) + " need " + std::to_string(grid) +
                " blocks to reduce their rows, more than the device's " + std::to_string(sms) + " SMs";
    return l;
  }
  l.grid = static_cast<int>(grid);
  l.rpb = static_cast<int>(ceil_div(n_mat * n, grid));
  l.smem = kSmemBytes;
  return l;
}

template <typename K>
void launch(K kernel, const Launch& l, const Args& args, cudaStream_t stream, int device) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> ready;  // blocks per SM, per kernel and device
  int per_sm = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
    auto it = ready.find(key);
    if (it == ready.end()) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(l.smem)));
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, l.smem));
      it = ready.emplace(key, per_sm).first;
    }
    per_sm = it->second;
  }
  TORCH_CHECK(per_sm >= 1 && l.grid <= per_sm * sm_count(device), "sinkhorn (cuda backend, paired tiles): ", l.grid,
              " blocks must be resident at once, the device holds ", per_sm * sm_count(device),
              "; use backend='triton'");
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(l.grid), 1, 1);
  config.blockDim = dim3(kThreads, 1, 1);
  config.dynamicSmemBytes = l.smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args));
}

// Zeroed tagged words (partials, results, then a failure count) and the workspace.
struct Buffers {
  at::Tensor words, ws;
};
Buffers buffers(const Launch& l, int64_t n, int64_t n_mat, int64_t K, const at::TensorOptions& like, Args& a) {
  const int64_t parts = 2 * n_mat * l.nb * l.nb * kB, vecs = 2 * K * n_mat * n;
  Buffers b;
  b.words = at::zeros({parts + vecs + 1}, like.dtype(at::kLong));
  a.parts = reinterpret_cast<Word*>(b.words.data_ptr<int64_t>());
  a.vecs = a.parts + parts;
  a.fail = a.vecs + vecs;
  b.ws = at::empty({2 * static_cast<int64_t>(l.grid) * kStreamed * kTile + 4 * n_mat * K * n},
                   like.dtype(at::kFloat));
  a.ws = b.ws.data_ptr<float>();
  a.rec = reinterpret_cast<float4*>(a.ws + 2 * static_cast<int64_t>(l.grid) * kStreamed * kTile);
  a.nb = l.nb;
  a.per = l.per;
  a.units = l.units;
  a.rpb = l.rpb;
  return b;
}

void check_fail(const Buffers& b) {
  check_failures(b.words.narrow(0, b.words.size(0) - 1, 1), "sinkhorn (cuda backend, paired tiles)");
}

Launch checked_plan(int64_t n, int64_t n_mat, int device) {
  const Launch l = plan(n, n_mat, sm_count(device));
  TORCH_CHECK(l.refused.empty(), "sinkhorn (cuda backend, symmetric n > 1024): ", l.refused,
              "; use backend='triton', or fewer matrices per call");
  return l;
}

// One call of either kernel on logits x [n_mat, n, n] (and dp, the backward's): its plan, zeroed words and workspace, and the
// arguments both directions share; the caller adds its own, then run() launches and checks the waits.
struct Call {
  int device;
  Launch l;
  Args a{};
  Buffers b;
  Call(const at::Tensor& x, const at::Tensor* dp, double tau, int64_t iters) : device(x.get_device()) {
    const int64_t n_mat = x.size(0), n = x.size(-1);
    l = checked_plan(n, n_mat, device);
    b = buffers(l, n, n_mat, iters, x.options(), a);
    a.x = x.data_ptr();
    a.xs0 = x.stride(0);
    a.xs1 = x.stride(1);
    a.xs2 = x.stride(2);
    a.n = static_cast<int>(n);
    a.K = static_cast<int>(iters);
    a.n_mat = static_cast<int>(n_mat);
    a.vec = vec_bits(x, dp);
    a.scale = static_cast<float>(0.5 / tau);
  }
  template <typename K>
  void run(K kernel) {
    launch(kernel, l, a, c10::cuda::getCurrentCUDAStream(), device);
    check_fail(b);
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& x, double tau, int64_t iters) {
  const int64_t n_mat = x.size(0), n = x.size(-1);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor p = new_output({n_mat, n, n}, f32);
  at::Tensor u = new_output({n_mat, iters, n}, f32);
  at::Tensor v = new_output({n_mat, iters, n}, f32);
  Call c(x, nullptr, tau, iters);
  c.a.P = p.data_ptr<float>();
  c.a.U = u.data_ptr<float>();
  c.a.V = v.data_ptr<float>();
  with_dtype(x.scalar_type(), "logits", [&](auto tag) { c.run(paired_fwd_kernel<decltype(tag)>); });
  return {p, u, v};
}

void backward(const at::Tensor& d, const at::Tensor& x, const at::Tensor& u, const at::Tensor& v, double tau,
              int64_t iters, const at::Tensor& dx) {
  TORCH_CHECK(dx.is_contiguous() && dx.sizes() == x.sizes() && dx.scalar_type() == x.scalar_type(),
              "sinkhorn (cuda backend, paired tiles): the gradient's buffer must be contiguous, of the logits' "
              "shape and dtype");
  Call c(x, &d, tau, iters);
  c.a.dp = d.data_ptr<float>();
  c.a.ds0 = d.stride(0);
  c.a.ds1 = d.stride(1);
  c.a.ds2 = d.stride(2);
  c.a.dx = dx.data_ptr();
  if (reinterpret_cast<uintptr_t>(dx.data_ptr()) % 16 != 0) c.a.vec &= ~kVecOut;  // a view written in place
  c.a.U = const_cast<float*>(u.data_ptr<float>());
  c.a.V = const_cast<float*>(v.data_ptr<float>());
  c.a.grad_scale = c.a.scale;
  with_dtype(x.scalar_type(), "logits", [&](auto tag) { c.run(paired_bwd_kernel<decltype(tag)>); });
}

}  // namespace paired
}  // namespace unimixer
