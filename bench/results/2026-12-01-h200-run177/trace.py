"""Probe (run173's, on the kernels as run176 timed them): where the time inside the cuda Sinkhorn's
kernels goes.
Builds a copy of csrc/ (library renamed unimixer_T) with %globaltimer stamps at the phase boundaries of
both kernels, written by thread 0 of each block and printed at the kernel's end; runs n = 1024,
symmetric, tau 0.05, K = 2 and K = 20, eagerly after warm-up, and prints per phase the mean over blocks
of (stamp - the earliest block's start), in us.

    PYTHONPATH=$PWD python trace.py [build]   (on a GPU, from the repository root; `build` compiles only)
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp

src = Path("csrc")
dst = Path(tempfile.gettempdir()) / "uk_trace" / "csrc"  # fixed, so that a second call reuses the build
dst.mkdir(parents=True, exist_ok=True)
for path in src.iterdir():
    if not (dst / path.name).exists() or (dst / path.name).read_bytes() != path.read_bytes():
        shutil.copy(path, dst / path.name)
reg = (dst / "registration.cpp").read_text()
reg = reg.replace("unimixer_C", "unimixer_T").replace("PyInit__C", "PyInit__T")
reg = re.sub(r'\s*m\.set_python_module\([^)]*\);', "", reg)
def write(name, text):
    if (dst / name).read_text() != text:
        (dst / name).write_text(text)


write("registration.cpp", reg)

cu = (dst / "sinkhorn.cu").read_text()
MACROS = r'''
#define TRACE_DECL long long _tr[16]; int _ntr = 0;
#define TRACE() do { if (threadIdx.x == 0 && _ntr < 16) { long long _g; \
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(_g)); _tr[_ntr++] = _g; } } while (0)
#define TRACE_PRINT(kind) do { if (threadIdx.x == 0) { for (int _i = 0; _i < _ntr; ++_i) \
  printf("T %d %d %d %lld\n", kind, blockIdx.x, _i, _tr[_i]); } } while (0)
'''
cu = cu.replace('#include "ops.h"\n', '#include "ops.h"\n#include <cstdio>\n' + MACROS, 1)
frame = "  const Frame<S> f(n, n_rt, n_ct);\n"
assert cu.count(frame) == 2
cu = cu.replace(frame, frame + "  TRACE_DECL TRACE();\n")
load = "  load_s0<T, SYM>(f, x, s0, s1, s2, vec & kVecLogits, scale, t);\n"
assert cu.count(load) == 2
cu = cu.replace(load, load + "  TRACE();\n")
# (anchor, stamp before it?) in kernel order
ANCHORS = [
    ("  broadcast_rows<S>(u1, r);\n", False),
    ("  col_publish(f, pc, col_tile_lse(f, sm, t), 1);\n", True),
    ("  col_collect<true>(f, sm, pc, 1, fail, v);\n", True),
    ("  store_cols(f, V, v);\n", False),
    ("  for (int k = 1; k < K; ++k) {\n", True),
    ("  // P = exp(T1 - u - v) = exp(T1 - v) / r\n", True),
    ("  read_tile<false>(f, dp + f.mat * sd0, sd1, sd2, vec & kVecGrad, g);  // dP\n", True),
    ("  col_publish(f, pc, col_tile_sum(f, sm, c), 1);\n", True),
    ("  col_publish(f, pc, col_tile_sum(f, sm, c), 1);\n", False),
    ("  const int64_t base = f.mat * n * n;\n", True),
    ("    if (f.tid == 0) store_word_release(mine + blockIdx.x, tagged(0.f, tag));\n", False),
    ("    __syncthreads();  // the waits' acquires before the block's reads\n", False),
    ("    read_tile<true, true>(f, G + base, n, 1, vec & kVecOut, g);\n", False),
]
for anchor, before in ANCHORS:
    assert cu.count(anchor) == 1, anchor
    cu = cu.replace(anchor, "  TRACE();\n" + anchor if before else anchor + "  TRACE();\n")
end = "  cluster_wait();  // no block leaves while a peer may still read its shared memory\n#endif\n}\n"
assert cu.count(end) == 2
head, mid, tail = cu.split(end)
cu = (head + "  TRACE();\n" + end.replace("#endif", "  TRACE(); TRACE_PRINT(0);\n#endif") + mid
      + "  TRACE();\n" + end.replace("#endif", "  TRACE(); TRACE_PRINT(1);\n#endif") + tail)
write("sinkhorn.cu", cu)

FWD = ["start", "load_s0", "row lse", "col: tile lse", "col: publish", "col: collect", "e init", "loop",
       "P store", "cluster wait"]
BWD = ["start", "load_s0", "U, V, T1", "dP, G, col sums", "publish", "loop", "G store, release", "wait flags",
       "read G^T", "dM store", "cluster wait"]

if len(sys.argv) == 1 or sys.argv[1] == "build":
    ext = cpp.load(name="_T",
                   sources=[str(dst / s) for s in ("registration.cpp", "rms_norm.cu", "sinkhorn.cu")],
                   extra_include_paths=[str(dst)], extra_cflags=["-O3"],
                   extra_cuda_cflags=["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-gencode",
                                      "arch=compute_90,code=sm_90"], is_python_module=False, verbose=False)
    # each case in its own process, its stdout (the device printf) parsed
    for iters in (() if sys.argv[1:] == ["build"] else (2, 20)):
        r = subprocess.run([sys.executable, __file__, str(iters), ext], capture_output=True, text=True)
        stamps = {}
        for line in r.stdout.splitlines():
            if line.startswith("T "):
                _, kind, blk, i, ns = line.split()
                stamps.setdefault((int(kind), int(blk)), []).append(int(ns))
        if not stamps:
            print(r.stdout[-3000:], r.stderr[-3000:])
        for kind, names in ((0, FWD), (1, BWD)):
            blocks = {b: s[-len(names):] for (k, b), s in stamps.items() if k == kind}  # the last call
            t0 = min(s[0] for s in blocks.values())
            nph = min(len(s) for s in blocks.values())
            print(f"K={iters} {'fwd' if kind == 0 else 'bwd'}: {len(blocks)} blocks; phase end, us after the "
                  "first block's start: mean [min, max] over blocks")
            for i in range(nph):
                vals = [(s[i] - t0) / 1e3 for s in blocks.values()]
                name = names[i] if i < len(names) else i
                print(f"   {name:18s} {sum(vals) / len(vals):7.2f} [{min(vals):7.2f}, {max(vals):7.2f}]")
        sys.stdout.flush()
else:
    iters = int(sys.argv[1])
    torch.ops.load_library(sys.argv[2])
    ops = torch.ops.unimixer_T
    torch.manual_seed(0)
    x = torch.randn(1024, 1024, device="cuda")
    g = torch.randn(1024, 1024, device="cuda")
    for _ in range(3):  # warm-up: each call prints its stamps, the parent keeps the last call's
        p, u, v = ops.sinkhorn_fwd(x, 0.05, iters, True)
        dx = ops.sinkhorn_bwd(g, x, u, v, 0.05, iters, True)
        torch.cuda.synchronize()
