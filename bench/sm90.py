"""Kernels compiled for sm_90 without a GPU: shared memory, registers and spills per tile.

``python -m bench sm90`` compiles the tile lists of the kernels whose tiles matter most (the
UniMixing forward, plain and with the fused RMSNorm epilogue, and the per-token FFN GEMM in each
mode) for an H100/H200 and prints what ``ptxas`` reports; for the resident Sinkhorn kernels also
what one iteration of their loop issues (SASS opcodes through ``cuobjdump``). Register spills
and shared memory over the 227 KiB an SM offers are facts a CPU machine can establish before any
GPU time is spent. Run it in a process without ``TRITON_INTERPRET``. The tests use
:func:`compile_sm90` for the same check.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile

SMEM_LIMIT = 227 * 1024


def _ptxas() -> str | None:
    for cand in (shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if cand and os.path.exists(cand):
            return cand
    try:  # the ptxas Triton ships
        from triton.backends.nvidia.compiler import get_ptxas

        tool = get_ptxas()
        return getattr(tool, "path", tool)
    except Exception:
        return None


def _cuobjdump() -> str | None:
    """``cuobjdump``: the CUDA toolkit's, else the one Triton ships."""
    cands = [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    try:
        import triton.backends.nvidia as nv

        cands.append(os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.exists(c)), None)


def sass(ptx: str) -> str | None:
    """The sm_90a SASS of ``ptx`` (``ptxas``, then ``cuobjdump -sass``), or ``None`` without the tools."""
    tool, dump = _ptxas(), _cuobjdump()
    if tool is None or dump is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        subprocess.run([tool, "-arch=sm_90a", src, "-o", cubin], check=True, capture_output=True)
        return subprocess.run([dump, "-sass", cubin], check=True, capture_output=True, text=True).stdout


def outer_loop_ops(sass_text: str) -> collections.Counter:
    """Opcode counts (``FADD``, ``BAR``, ``SHFL``...) of the SASS between the head of a kernel's
    outermost loop (the one holding the most other loops, then the longest) and its backward branch:
    what one iteration issues, counting each inner loop's body once."""
    ins = []
    for line in sass_text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    loops = []
    for addr, text in ins:
        m = re.search(r"BRA\s+(?:\S+,\s*)?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    if not loops:
        raise ValueError("no loop in the SASS")
    def inner(lp):
        return sum(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)

    head, tail = max(loops, key=lambda lp: (inner(lp), lp[1] - lp[0]))
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
                               for addr, text in ins if head <= addr <= tail)


def ptxas_usage(ptx: str) -> tuple[int | None, int | None]:
    """``(registers per thread, spill-store bytes)`` as ``ptxas -v`` reports them, or ``None``s."""
    tool = _ptxas()
    if tool is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([tool, "-arch=sm_90a", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    regs = re.findall(r"Used (\d+) registers", done.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", done.stderr)
    return (int(regs[0]) if regs else None), (int(spills[0]) if spills else None)


def compile_sm90(kernel, ptrs: dict, consts: dict, warps: int, stages: int, divisible=(),
                 floats=("eps",), usage: bool = False, ptx: bool = False,
                 options: dict | None = None) -> dict:
    """Compile ``kernel`` (a ``@triton.jit`` function or an autotuner) for sm_90. ``ptrs``: pointer
    argument types (``"*bf16"``); every other non-constexpr argument is ``i32`` (``fp32`` for
    ``floats``); ``divisible`` names the integers the JIT would see as multiples of 16 (pointers
    always are). Strides equal to 1 belong in ``consts``, as the JIT specialises them. ``options``:
    further compile options (``enable_fp_fusion``). Returns the
    shared memory in bytes and, with ``usage``, the registers and spill bytes from ``ptxas``; with
    ``ptx``, the PTX text."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction):  # autotuners and heuristics wrap the JIT function
        fn = fn.fn
    # constexpr parameters left out take their defaults, as at a launch
    consts = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **consts}
    sig = {a: "constexpr" if a in consts else ptrs.get(a, "fp32" if a in floats else "i32")
           for a in fn.arg_names}
    div = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
           if sig[a].startswith("*") or a in divisible}
    out = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=div),
                         target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=warps, num_stages=stages, **(options or {})))
    result = {"shared": out.metadata.shared}
    if usage:
        result["regs"], result["spill"] = ptxas_usage(out.asm["ptx"])
    if ptx:
        result["ptx"] = out.asm["ptx"]
    return result


def loop_body(ptx: str) -> str:
    """The PTX of a kernel's (first) innermost loop: from its header label to the branch back, for
    checks of what runs once per step (barriers, shared memory, shuffles)."""
    head = re.search(r"^(\$L__BB\d+_\d+):.*Loop Header", ptx, re.M)
    if head is None:
        raise ValueError("no loop in the PTX")
    return ptx[head.end():ptx.rindex(head.group(1) + ";")]


def unimixing_fwd_rows(usage: bool = True):
    """``(label, config, result)`` for every forward tile at ``paper-small`` (plain, with the residual,
    and fused) and ``paper-100m`` (fused)."""
    import torch
    import triton
    import triton.language as tl
    from unimixer_kernels.triton_kernels import unimixing as k

    ptrs = dict(X="*bf16", WL="*bf16", WG="*bf16", Y="*bf16", S_OUT="*bf16", NW="*bf16", RSTD="*fp32")
    for b, d, fuse, residual in ((4, 128, False, False), (4, 128, False, True), (4, 128, True, False),
                                 (4, 512, True, False)):
        bp = triton.next_power_of_2(b)
        fused = k.fused_norm_rows(b, d, torch.device("cuda")) if fuse else None
        options = k._fused_row_options(fused, b, d) if fuse else None
        local_dot = k.uses_local_dot(b, fuse, True)
        for kw, warps, stages in k._fwd_configs(bp, options, local_dot, True):
            consts = dict(kw, B=b, BP=bp, CW=k.LOCAL_DOT_CW if local_dot else bp, GROUP=8,
                          LOCAL_DOT=local_dot, FUSE_NORM=fuse, HAS_RESIDUAL=residual, DOT_DTYPE=tl.bfloat16,
                          PRECISION="tf32")
            res = compile_sm90(k.unimixing_fwd_kernel, ptrs, consts, warps, stages,
                               divisible=("N", "L", "BS", "D", "T", "BS_BUCKET"), usage=usage)
            kind = " fused" if fuse else " residual" if residual else ""
            yield f"unimixing_fwd B={b} D={d}{kind}", (dict(kw), warps, stages), res


def ffn_gemm_rows(usage: bool = True):
    """``(label, config, result)`` for the per-token FFN GEMM (bf16, one product with a bias, or two):
    the tiles its autotuner keeps for a large GEMM with pointer loads, and the TMA path's tile with
    plain and transposed operands, launched as that path launches it (persistent or not)."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import pswiglu as k

    divisible = ("M", "N", "K", "M_KEY", "K_KEY", "stride_am", "stride_at", "stride_bt", "stride_bk",
                 "stride_cm", "stride_ct")
    for dual in (False, True):
        consts = dict(DUAL=dual, HAS_BIAS=not dual, CDT=tl.bfloat16, PREC="tf32", GROUP_M=8, stride_ak=1,
                      stride_bn=1, stride_cn=1)
        named = dict(M_KEY=2048, N=4096, K_KEY=1024)
        for cfg in k._prune_gemm(k._gemm_configs(), named, **consts):
            res = compile_sm90(k.ffn_token_gemm_kernel, {a: "*bf16" for a in "A B A2 B2 BIAS C".split()},
                               dict(consts, **cfg.kwargs), cfg.num_warps, cfg.num_stages, usage=usage,
                               divisible=divisible)
            yield f"ffn_token_gemm dual={dual}", (cfg.kwargs, cfg.num_warps, cfg.num_stages), res
        bm, bn, bk, warps, stages, persistent = k._tma_launch(dual)
        for a_t, b_t in ((False, False), (False, True), (True, False)):
            ptrs = dict(A=f"tensordesc<bf16{[1, bk, bm] if a_t else [1, bm, bk]}>",
                        B=f"tensordesc<bf16{[1, bn, bk] if b_t else [1, bk, bn]}>", BIAS="*bf16",
                        C=f"tensordesc<bf16{[1, bm, bn]}>")
            ptrs.update(A2=ptrs["A"], B2=ptrs["B"])
            tile = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
            launch = dict(tile, TMA=True, A_T=a_t, B_T=b_t, PERSISTENT=persistent)
            res = compile_sm90(k.ffn_token_gemm_kernel, ptrs, dict(consts, **launch), warps, stages,
                               usage=usage, divisible=divisible)
            yield f"ffn_token_gemm dual={dual} tma a_t={a_t} b_t={b_t}", (tile, warps, stages), res


def ffn_weight_rows(usage: bool = True, ptx: bool = False):
    """``(label, config, result)`` for the fused path's weight-gradient kernel at ``D = 128`` and
    ``256`` (bf16, gated): the tiles its autotuner keeps for a large batch, reading ``A, dG, dV``
    from memory and recomputing them (``UNIMIXER_FFN_BACKWARD=recompute``); with ``ptx``, each
    result holds the PTX too."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import pswiglu as k

    ptrs = {a: "*bf16" for a in "DO U A DG DV W1 W3 W2 B1 B3 G V".split()}
    ptrs.update({a: "*fp32" for a in "DW1 DW3 DW2 DB1 DB3 DB2".split()})
    for d, h in ((128, 176), (256, 688)):
        for recompute in (False, True):
            bd, bh = k._weight_tiles(d, h, recompute)
            consts = dict(GATED=True, HAS_B1=True, HAS_B3=True, SAVED=False, RECOMPUTE=recompute,
                          CDT=tl.bfloat16, PREC="tf32", BLOCK_D=bd, BLOCK_H=bh, stride_dod=1, stride_ud=1)
            for cfg in k._prune_weight(k._weight_configs(), dict(BS_KEY=2048), **consts):
                res = compile_sm90(k.ffn_bwd_weight_kernel, ptrs, dict(consts, **cfg.kwargs), cfg.num_warps,
                                   cfg.num_stages, usage=usage, ptx=ptx, floats=(),
                                   divisible=("BS", "D", "H", "BS_KEY", "stride_dos", "stride_dot",
                                              "stride_us", "stride_ut"))
                label = f"ffn_bwd_weight D={d}{' recompute' if recompute else ''}"
                yield label, (dict(cfg.kwargs, BLOCK_D=bd, BLOCK_H=bh), cfg.num_warps, cfg.num_stages), res


def ffn_fwd_rows(usage: bool = True):
    """``(label, config, result)`` for the fused path's forward kernel at ``paper-small`` (``D = 128``,
    ``h = 176``, bf16, gated, nothing saved): the tiles its autotuner keeps for a large batch."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import pswiglu as k

    ptrs = {a: "*bf16" for a in "U W1 W3 W2 B1 B3 B2 OUT G V".split()}
    consts = dict(GATED=True, HAS_B1=True, HAS_B3=True, HAS_B2=True, SAVE=False, CDT=tl.bfloat16, PREC="tf32",
                  BLOCK_D=128, stride_ud=1)
    for cfg in k._prune_tiles(k._tile_configs(), dict(BS_KEY=2048), **consts):
        res = compile_sm90(k.ffn_fwd_kernel, ptrs, dict(consts, **cfg.kwargs), cfg.num_warps, cfg.num_stages,
                           usage=usage, floats=(),
                           divisible=("BS", "D", "H", "BS_KEY", "stride_us", "stride_ut"))
        yield "ffn_fwd D=128", (dict(cfg.kwargs), cfg.num_warps, cfg.num_stages), res


def ffn_act_rows(usage: bool = True):
    """``(label, config, result)`` for the fused path's activation-gradient kernel at ``paper-small``
    (``D = 128``, ``h = 176``, bf16, gated, storing ``A, dG, dV``), plain and with the norm in front
    (``PRENORM``): the tiles its autotuner keeps for a large batch."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import pswiglu as k

    ptrs = {a: "*bf16" for a in "DO U W1 W3 W2 B1 B3 G V DU A DG DV NW DS".split()}
    ptrs.update(RSTD="*fp32", DW_PART="*fp32")
    for prenorm in (False, True):
        consts = dict(GATED=True, HAS_B1=True, HAS_B3=True, SAVED=False, STORE=True, PRENORM=prenorm,
                      ACCUMULATE=False, CDT=tl.bfloat16, PREC="tf32",
                      BLOCK_D=128, stride_dod=1, stride_ud=1)
        for cfg in k._prune_tiles(k._tile_configs(), dict(BS_KEY=2048), **consts):
            res = compile_sm90(k.ffn_bwd_act_kernel, ptrs, dict(consts, **cfg.kwargs), cfg.num_warps,
                               cfg.num_stages, usage=usage, floats=(),
                               divisible=("BS", "D", "H", "BS_KEY", "stride_dos", "stride_dot", "stride_us",
                                          "stride_ut", "stride_dus"))
            label = f"ffn_bwd_act D=128{' prenorm' if prenorm else ''}"
            yield label, (dict(cfg.kwargs), cfg.num_warps, cfg.num_stages), res


def sinkhorn_resident_rows():
    """``(label, result)`` for both resident Sinkhorn kernels at ``N = 1024`` (64 x 128 tiles, the
    launcher's warps and partial blocks), dense symmetric and low-rank, with either wait for the
    partials (``THREAD_POLL``), specialised as the JIT sees a contiguous ``N = 1024`` matrix; each
    result has ``loop``, the opcode counts of one iteration of the ``K`` loop (two half-steps; each
    polling loop's body counted once), where ``ptxas`` and ``cuobjdump`` are found."""
    from unimixer_kernels.triton_kernels import sinkhorn as k

    ptrs = dict({a: "*fp32" for a in "SRC A B P U V G DX DP".split()}, PR="*i64", PC="*i64", FAIL="*i64")
    bm, bn = k.RESIDENT_TILE
    warps, rt_p, ct_p = k._resident_shape(bm, bn, 1024 // bm, 1024 // bn)  # as the launcher has them
    for mode, label, poll in ((0, "dense symmetric", True), (0, "dense symmetric", False),
                              (2, "low-rank fp32", True)):
        for kernel in (k.sinkhorn_resident_fwd_kernel, k.sinkhorn_resident_bwd_kernel):
            # BK: the chunk width at paper-small's rank (128)
            consts = dict(MODE=mode, SYMMETRIC=mode == 0, BM=bm, BN=bn, BK=k._lowrank_chunk_width(128, True),
                          DOT_IEEE=True, RT_P=rt_p, CT_P=ct_p, MAX_SPINS=k.RESIDENT_MAX_SPINS,
                          THREAD_POLL=poll, s2=1)
            if kernel is k.sinkhorn_resident_bwd_kernel:
                consts["sd2"] = 1
            res = compile_sm90(kernel, ptrs, consts, warps, 1, floats=("scale", "grad_scale"), usage=True,
                               ptx=True, divisible=("n", "s0", "s1", "sd0", "sd1"),
                               options=dict(enable_fp_fusion=mode != 0))
            text = sass(res["ptx"])
            res["loop"] = outer_loop_ops(text) if text is not None else None
            yield f"{kernel.__name__} {label}, {'thread' if poll else 'block'} poll", res


def report() -> str:
    lines = ["| kernel | tile | warps | stages | shared KiB | registers | spill bytes |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for rows in (unimixing_fwd_rows(), ffn_gemm_rows(), ffn_fwd_rows(), ffn_act_rows(), ffn_weight_rows()):
        for label, (kw, warps, stages), res in rows:
            tile = " ".join(f"{k}={v}" for k, v in kw.items())
            lines.append(f"| {label} | {tile} | {warps} | {stages} | {res['shared'] / 1024:.0f} | "
                         f"{res.get('regs')} | {res.get('spill')} |")
    lines += ["", "Resident Sinkhorn, N = 1024: one iteration of the K loop (two half-steps), SASS",
              "", "| kernel | registers | spill bytes | instructions | BAR | SHFL | MUFU | FMNMX |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, res in sinkhorn_resident_rows():
        loop = res["loop"]
        ops = ("BAR", "SHFL", "MUFU", "FMNMX")
        counts = " | ".join(str(loop[op]) if loop else "–" for op in ops)
        lines.append(f"| {label} | {res.get('regs')} | {res.get('spill')} | "
                     f"{sum(loop.values()) if loop else '–'} | {counts} |")
    return "\n".join(lines)
