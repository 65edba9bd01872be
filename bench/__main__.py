"""``python -m bench [check|run|table|plot|compare|cases|floors|train|profile|memory|sm90] ...`` (repo root).

With no command: ``check`` = correctness of every op x backend, then the quick benchmark table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch


def _device(arg: str | None) -> torch.device:
    if arg:
        return torch.device(arg)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(arg: str | None, device: torch.device) -> torch.dtype:
    if arg is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[arg]


def _csv(s: str | None) -> list[str] | None:
    return [x for x in s.split(",") if x] if s else None


def _bench(args, device, quick: bool, progress_label: str = "") -> tuple[dict, list[dict]]:
    from . import ceilings as ceil
    from .cases import plan_for
    from .env import header
    from .progress import Progress
    from .runner import CaseRunner, add_speedups, providers_for, write_results

    _quiet_compile_logs()
    dtype = _dtype(args.dtype, device)
    plan = plan_for(device.type, quick, _csv(args.case), _csv(args.preset), _csv(args.mode))
    sweep = [int(x) for x in _csv(getattr(args, "sweep_bs", None)) or []]
    if sweep:
        plan = [(c, p.with_bs(bs), m) for c, p, m in plan for bs in sweep]
    only = _csv(args.provider)
    jobs = [(c, p, m, providers_for(c, only, quick)) for c, p, m in plan]
    gpu = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (25 if gpu else 10)
    rep = args.rep if args.rep is not None else (100 if gpu else 60)
    if quick and args.rep is None:
        rep = 50 if gpu else 40
    if not gpu:  # on a small shared CPU, intra-op threads fighting other processes dominate the noise
        torch.set_num_threads(args.threads or 1)
    print(f"measuring ceilings on {device} ...", file=sys.stderr, flush=True)
    c = ceil.measure(device)
    head = header(device, c, dtype=str(dtype).replace("torch.", ""), autocast=gpu and not args.no_autocast,
                  warmup_ms=warmup, rep_ms=rep, quick=quick)
    if not gpu:
        head["cpu_threads"] = torch.get_num_threads()
    runner = CaseRunner(device, dtype, c, warmup, rep, autocast=not args.no_autocast)
    total = sum(len(m) * len(p) for _, _, m, p in jobs)
    progress = Progress(total)
    rows: list[dict] = []
    start = time.perf_counter()
    out_dir = Path(args.out) if getattr(args, "out", None) else None
    budget = getattr(args, "budget_s", None)
    for case, preset, modes, providers in jobs:
        if budget and time.perf_counter() - start > budget:
            head["stopped"] = f"time budget of {budget:.0f}s reached; later cases not run"
            print(f"\n{head['stopped']}", file=sys.stderr)
            break
        rows += runner.run_case(case, preset, modes, providers, progress)
        if out_dir is not None:  # rewrite after every case: a killed run keeps what it measured
            write_results(out_dir, args.name, head, rows)
    progress.close()
    head["elapsed_s"] = round(time.perf_counter() - start, 1)
    if out_dir is not None:
        j, cpath = write_results(out_dir, args.name, head, rows)
        print(f"wrote {j} and {cpath}", file=sys.stderr)
    return head, add_speedups(rows)


def _quiet_compile_logs() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*TensorFloat32.*")
    for name in ("torch._inductor", "torch._dynamo", "torch.utils.cpp_extension"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import torch._dynamo.config as dc

        for attr in ("cache_size_limit", "recompile_limit"):
            if hasattr(dc, attr):
                setattr(dc, attr, 64)
    except Exception:
        pass


def cmd_check(args) -> int:
    device = _device(args.device)
    # Without a GPU the Triton kernels are still checked, in the CPU interpreter on small shapes.
    # The setting must precede every kernel definition (so, every import of the package's
    # kernels) and is switched off again before the benchmark, where interpreter timings would
    # mean nothing.
    interpret = device.type == "cpu" and "TRITON_INTERPRET" not in os.environ
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"

    from .check import check_dtypes, count_checks, format_checks, run_checks
    from .env import describe_device
    from .progress import Progress
    from .report import markdown_table

    t0 = time.perf_counter()
    print(f"# unimixer-kernels check on {describe_device(device)}\n")
    if interpret:
        print("No CUDA device: the Triton kernels are checked in the CPU interpreter.\n")
    ops = _csv(args.op)
    progress = Progress(count_checks(ops) * len(check_dtypes(device)))
    results = run_checks(device, progress, ops)
    progress.close()
    if interpret:
        os.environ["TRITON_INTERPRET"] = "0"
    print("## Correctness (every op x backend against the fp64 reference, SPEC §8)\n")
    print(format_checks(results))
    failed = any(r.status in ("FAIL", "ERROR") for r in results)
    if not args.no_bench:
        head, rows = _bench(args, device, quick=True)
        print(f"\n## Quick benchmark ({head['device']}, {head['dtype']}, median ms)\n")
        print(markdown_table(head, rows))
    print(f"\ndone in {time.perf_counter() - t0:.0f}s" + ("; CORRECTNESS FAILURES above" if failed else ""))
    return 1 if failed else 0


def cmd_run(args) -> int:
    from .report import describe_header, markdown_table

    device = _device(args.device)
    head, rows = _bench(args, device, quick=args.quick)
    print(f"\n{describe_header(head)}\n")
    print(markdown_table(head, rows))
    return 0


def cmd_table(args) -> int:
    from .report import describe_header, markdown_table
    from .runner import add_speedups, load_results

    head, rows = load_results(args.results)
    rows = add_speedups(rows)
    if args.case:
        rows = [r for r in rows if r["case"] in _csv(args.case)]
    print(f"{describe_header(head)}\n")
    print(markdown_table(head, rows, with_reasons=not args.no_reasons))
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_sweep

    try:
        paths = plot_sweep(args.results, case=args.case, mode=args.mode, out=args.out)
    except ImportError as exc:
        raise SystemExit(f"plot: needs matplotlib ({exc}); pip install -e '.[bench]'") from None
    for p in paths:
        print(f"wrote {p}")
    return 0 if paths else 1


def cmd_compare(args) -> int:
    from .report import compare
    from .runner import load_results

    _, old = load_results(args.old)
    _, new = load_results(args.new)
    text, bad = compare(old, new, args.fail_above)
    print(text)
    return 1 if bad else 0


def cmd_floors(args) -> int:
    from .notes import floors_table, notes_sections, write_notes

    if args.notes:
        text = notes_sections(args.copy_tbps, args.matmul_tflops, args.dtype or "bf16")
        if args.write:
            write_notes(args.write, text)
            print(f"updated the floor tables in {args.write}")
        else:
            print(text)
    else:
        print(floors_table(_csv(args.preset), args.copy_tbps, args.matmul_tflops, args.dtype or "bf16"))
    return 0


def cmd_train(args) -> int:
    from .train_compare import main as train_main

    device = _device(args.device).type
    backends = tuple(_csv(args.backends))
    if len(backends) != 2:
        raise SystemExit(f"--backends takes two backends, e.g. reference,triton; got {args.backends!r}")
    return train_main(args.out, _csv(args.family), backends, args.steps, device)


def _reports(args, device: torch.device, make) -> int:
    """``make(case, preset, mode)`` -> markdown for every entry of the plan the arguments name (as
    ``run``: case names or ``case@preset`` pairs, presets, modes; a pair without ``--mode`` takes its
    plan's modes), printed as it comes and (``--out``) rewritten after each, so a run cut short keeps
    what it has."""
    from .cases import plan_for

    _quiet_compile_logs()
    plan = plan_for(device.type, False, _csv(args.case), _csv(args.preset), _csv(args.mode))
    parts = []
    for case, preset, modes in plan:
        for mode in modes:
            parts.append(make(case.name, preset.name, mode))
            print(parts[-1], flush=True)
            if args.out:
                Path(args.out).write_text("\n\n".join(parts) + "\n")
    return 0


def cmd_profile(args) -> int:
    from .profiling import profile_case

    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    return _reports(args, device, lambda case, preset, mode: profile_case(
        case, preset, mode, _csv(args.provider), device, dtype, steps=args.steps, top=args.top,
        autocast=not args.no_autocast, host=args.host, with_timeline=args.timeline))


def cmd_memory(args) -> int:
    from .memory import memory_case

    if not args.case or (not args.preset and any("@" not in c for c in _csv(args.case))):
        raise SystemExit("memory: name the cases and their presets, e.g. --case "
                         "rankmixer-block@rankmixer-100m or --case rankmixer-block --preset rankmixer-100m")
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    return _reports(args, device, lambda case, preset, mode: "\n\n".join(
        memory_case(case, preset, mode, provider, device, dtype, top=args.top, autocast=not args.no_autocast,
                    moments=args.moments)
        for provider in _csv(args.provider)))


def cmd_sm90(args) -> int:
    from unimixer_kernels._registry import triton_interpreter_on

    if triton_interpreter_on():
        raise SystemExit("python -m bench sm90 compiles for the GPU: unset TRITON_INTERPRET")
    from .sm90 import report

    print(report())
    return 0


def cmd_stalls(args) -> int:
    from .stalls import report

    print(report(args.csv, args.top))
    return 0


def cmd_cases(args) -> int:
    from .cases import CASES, CPU_PLAN, GPU_PLAN
    from .presets import PRESETS
    from .runner import providers_for

    if args.names:  # the GPU plan's case@preset pairs, in plan order, one per line (for scripts)
        print("\n".join(f"{c}@{p}" for c, p, _ in GPU_PLAN))
        return 0
    print("| case | what | presets it applies to | providers here |\n|---|---|---|---|")
    for c in CASES.values():
        presets = ", ".join(p for p in PRESETS if c.applies_to(PRESETS[p]))
        print(f"| {c.name} | {c.title} | {presets} | {', '.join(providers_for(c))} |")
    print("\nGPU plan (python -m bench run on a GPU):")
    for c, p, m in GPU_PLAN:
        print(f"  {c} @ {p}: {', '.join(m)}")
    print("CPU plan:")
    for c, p, m in CPU_PLAN:
        print(f"  {c} @ {p}: {', '.join(m)}")
    print("\nPresets:")
    for p in PRESETS.values():
        print(f"  {p.name}: {p.describe()}")
    return 0


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="comma-separated preset names (default: the device's case plan)")
    p.add_argument("--case", help="comma-separated case names, or case@preset pairs")
    p.add_argument("--mode", help="comma-separated modes: fwd,bwd,fwd+bwd,infer")
    p.add_argument("--provider", help="comma-separated providers (default: all)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                   help="activations (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--warmup", type=float, help="warm-up per row, ms")
    p.add_argument("--rep", type=float, help="timed repetitions per row, ms")
    p.add_argument("--no-autocast", action="store_true", help="do not run under torch.autocast(bf16) on GPU")
    p.add_argument("--threads", type=int, help="CPU only: torch threads for the timed runs (default 1)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("check", help="correctness of every op x backend, then the quick benchmark table")
    _add_bench_args(p)
    p.add_argument("--no-bench", action="store_true", help="correctness only")
    p.add_argument("--op", help="comma-separated ops to check (default: all)")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("run", help="benchmark the case plan and write DIR/NAME.json and .csv")
    _add_bench_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="results", help="file stem (default results)")
    p.add_argument("--quick", action="store_true", help="the quick case list, shorter timing")
    p.add_argument("--sweep-bs", help="comma-separated batch sizes: every case at each (for the plot)")
    p.add_argument("--budget-s", type=float, help="start no new case after this many seconds")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("table", help="markdown table of a results file")
    p.add_argument("results")
    p.add_argument("--case", help="comma-separated case names")
    p.add_argument("--no-reasons", action="store_true", help="leave out the list of why cells are empty")
    p.set_defaults(fn=cmd_table)
    p = sub.add_parser("plot", help="time against batch size from a --sweep-bs results file")
    p.add_argument("results")
    p.add_argument("--case", help="case to draw (default: every case with more than one batch size)")
    p.add_argument("--mode", default="fwd+bwd")
    p.add_argument("--out", help="PNG path (default: next to the results, one per case)")
    p.set_defaults(fn=cmd_plot)
    p = sub.add_parser("compare", help="flag rows that got slower than --fail-above x")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--fail-above", type=float, default=1.1)
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("sm90", help="compile the main kernels' tiles for sm_90 (no GPU needed): "
                                     "shared memory, registers, spills")
    p.set_defaults(fn=cmd_sm90)
    p = sub.add_parser("stalls", help="per launch, the stall reasons and the instructions warps wait at, "
                                       "from ncu_source.csv (gpu_run.sh with NCU_SOURCE=1)")
    p.add_argument("csv")
    p.add_argument("--top", type=int, default=12, help="instructions listed per launch (default 12)")
    p.set_defaults(fn=cmd_stalls)
    p = sub.add_parser("cases", help="list the cases, the presets they apply to, the plans and the presets")
    p.add_argument("--names", action="store_true", help="only the GPU plan's case@preset pairs, one per line")
    p.set_defaults(fn=cmd_cases)
    p = sub.add_parser("floors", help="the floor model at the presets, as markdown (for NOTES.md)")
    p.add_argument("--preset", help="comma-separated presets (default: the SPEC §10 ones)")
    p.add_argument("--copy-tbps", type=float, default=4.14)
    p.add_argument("--matmul-tflops", type=float, default=680.0)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--notes", action="store_true", help="per-case sections, as in bench/NOTES.md")
    p.add_argument("--write", help="with --notes: replace the floor tables in this NOTES.md")
    p.set_defaults(fn=cmd_floors)
    p = sub.add_parser("train", help="train one ranker per family with two backends from one seed; "
                       "compare the loss curves (DIR/train_compare.json and .png)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--family", default="unimixer,unimixer-lite,rankmixer", help="comma-separated families")
    p.add_argument("--backends", default="reference,triton", help="the two backends to compare")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("profile", help="kernels by device time for cases under torch.profiler (GPU)")
    _add_bench_args(p)
    p.set_defaults(mode="fwd+bwd", provider="triton")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=20, help="kernels listed per provider")
    p.add_argument("--host", action="store_true",
                   help="also the host's time of an eager step: its wall time, and Python functions "
                        "under cProfile")
    p.add_argument("--timeline", action="store_true",
                   help="also one step's kernels in start order with their streams, and how much of its "
                        "span the main stream, only side streams, or no kernel runs (GPU; with side "
                        "streams a graph's branches do not keep their timing under the profiler)")
    p.add_argument("--out", help="also write the markdown to this file")
    p.set_defaults(fn=cmd_profile)
    p = sub.add_parser("memory", help="the blocks alive at a step's peak memory, by allocating site (CUDA)")
    _add_bench_args(p)
    p.set_defaults(mode="fwd+bwd", provider="triton")
    p.add_argument("--top", type=int, default=20, help="allocation sites listed")
    p.add_argument("--moments", type=int, default=2,
                   help="runner-up peaks whose live blocks are listed too (where the peak moves next)")
    p.add_argument("--out", help="also write the markdown to this file")
    p.set_defaults(fn=cmd_memory)
    args = parser.parse_args(argv)
    if args.cmd is None:
        args = parser.parse_args(["check", *(argv or [])])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
