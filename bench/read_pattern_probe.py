"""How fast a 4096 x 4096 fp32 matrix is read in the paired Sinkhorn kernels' pattern, beside a contiguous
read of the same bytes: 130 blocks of 16 warps (one block an SM), each warp reading its unit's two 64 x 64
blocks (I, J) and (J, I) along their rows, as `load_unit` does, with R rows in flight and V floats a lane.
Four matrices are read in turn (256 MB, beyond L2), so every read comes from HBM. Prints the median time
of a read of the whole matrix and its rate. Run from the repo root on a GPU:
`python bench/read_pattern_probe.py`."""

from __future__ import annotations

import torch
from torch.utils.cpp_extension import load_inline

CUDA = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>

constexpr int kB = 64, kWarps = 16;

template <int V, bool NC>
__device__ __forceinline__ float read(const float* p) {
  if constexpr (V == 4) {
    float4 v;
    if constexpr (NC) {
      asm volatile("ld.global.nc.L1::no_allocate.v4.f32 {%0,%1,%2,%3}, [%4];"
                   : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    } else {
      v = *reinterpret_cast<const float4*>(p);
    }
    return v.x + v.y + v.z + v.w;
  } else {
    float2 v;
    if constexpr (NC) {
      asm volatile("ld.global.nc.L1::no_allocate.v2.f32 {%0,%1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
    } else {
      v = *reinterpret_cast<const float2*>(p);
    }
    return v.x + v.y;
  }
}

// one warp a unit (I <= J, row-major over (I, J)); blocks (J, I) then (I, J), R rows in flight
template <int R, int V, bool NC>
__global__ void __launch_bounds__(512, 1) blocks(const float* x, int n, int units, float* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int idx = blockIdx.x * kWarps + warp;
  if (idx >= units) return;
  const int nb = n / kB;
  int r = idx, I = 0;
  while (r >= nb - I) { r -= nb - I; ++I; }
  const int J = I + r;
  constexpr int kLanesRow = kB / V;          // lanes a row takes
  constexpr int kRowsInstr = 32 / kLanesRow;  // rows one instruction covers
  const int sub = lane / kLanesRow, col = (lane % kLanesRow) * V;
  float acc = 0.f;
  for (int half = 0; half < 2; ++half) {
    const int r0 = (half == 0 ? J : I) * kB, c0 = (half == 0 ? I : J) * kB;
    for (int b = 0; b < kB; b += R) {
      float v[R / kRowsInstr];
#pragma unroll
      for (int q = 0; q < R / kRowsInstr; ++q) {
        v[q] = read<V, NC>(x + static_cast<long long>(r0 + b + q * kRowsInstr + sub) * n + c0 + col);
      }
#pragma unroll
      for (int q = 0; q < R / kRowsInstr; ++q) acc += v[q];
    }
  }
  out[idx * 32 + lane] = acc;
}

// the same bytes in contiguous chunks, one a warp, 16 float4 a lane in flight
__global__ void __launch_bounds__(512, 1) contiguous(const float* x, long long per_warp, int units,
                                                     float* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int idx = blockIdx.x * kWarps + warp;
  if (idx >= units) return;
  const float* p = x + idx * per_warp;
  float acc = 0.f;
  for (long long k = 0; k < per_warp; k += 16 * 128) {
    float v[16];
#pragma unroll
    for (int q = 0; q < 16; ++q) v[q] = read<4, false>(p + k + q * 128 + lane * 4);
#pragma unroll
    for (int q = 0; q < 16; ++q) acc += v[q];
  }
  out[idx * 32 + lane] = acc;
}

void run(torch::Tensor x, torch::Tensor out, int64_t variant) {
  const int n = x.size(1), nb = n / kB, units = nb * (nb + 1) / 2, grid = (units + kWarps - 1) / kWarps;
  const float* p = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  switch (variant) {
    case 0: blocks<16, 2, false><<<grid, 512>>>(p, n, units, o); break;
    case 1: blocks<32, 2, false><<<grid, 512>>>(p, n, units, o); break;
    case 2: blocks<16, 4, false><<<grid, 512>>>(p, n, units, o); break;
    case 3: blocks<32, 4, false><<<grid, 512>>>(p, n, units, o); break;
    case 4: blocks<16, 2, true><<<grid, 512>>>(p, n, units, o); break;
    case 5: blocks<32, 4, true><<<grid, 512>>>(p, n, units, o); break;
    default: {
      const long long per_warp = (static_cast<long long>(n) * n / units) / 2048 * 2048;
      contiguous<<<grid, 512>>>(p, per_warp, units, o);
    }
  }
}
"""

VARIANTS = ["blocks R=16 V=2 (load_unit)", "blocks R=32 V=2", "blocks R=16 V=4", "blocks R=32 V=4",
            "blocks R=16 V=2 nc", "blocks R=32 V=4 nc", "contiguous 16 x float4"]


def main() -> None:
    mod = load_inline("read_pattern_probe",
                      cpp_sources="void run(torch::Tensor x, torch::Tensor out, int64_t variant);",
                      cuda_sources=CUDA, functions=["run"],
                      extra_cuda_cflags=["-O3", "-gencode=arch=compute_90,code=sm_90"])
    n, units = 4096, 2080
    xs = [torch.randn(n, n, device="cuda") for _ in range(4)]
    out = torch.empty(units * 32, device="cuda")
    for v, name in enumerate(VARIANTS):
        per_warp = (n * n // units) // 2048 * 2048  # the contiguous read's floats a warp (as `run`)
        bytes_read = units * (per_warp if v == len(VARIANTS) - 1 else 2 * 64 * 64) * 4
        times = []
        for rep in range(44):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            mod.run(xs[rep % 4], out, v)
            b.record()
            b.synchronize()
            if rep >= 4:
                times.append(a.elapsed_time(b) * 1e3)
        times.sort()
        med = times[len(times) // 2]
        print(f"{name:30s} median {med:7.1f} us  min {times[0]:7.1f}  {bytes_read / med / 1e6:5.2f} TB/s",
              flush=True)


if __name__ == "__main__":
    main()
