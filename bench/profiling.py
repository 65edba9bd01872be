"""Where the time of one case goes: ``python -m bench profile --case C --preset P [--mode M]
[--provider X]`` runs the case under ``torch.profiler`` and prints, per provider, the kernels by
total device time (launches per step, microseconds per step), the sum of kernel time per step
and the wall time per step. Kernel time far below wall time means launch- or host-bound. On a CPU
it lists the ``aten`` operators by self time instead. Last, the configuration every autotuned kernel of
the project ran with (its key and the tuned tile), since a kernel's time depends on it.

``--host`` adds, per provider, where the host's time goes when the step is not graphed: the wall
time per step without any profiler, then the Python functions by their own time (and the
project's functions by cumulative time) under ``cProfile``, per step.

``--timeline`` adds, per provider, one more step profiled alone: its kernels in start order with
their streams, and how much of the step's span the main stream runs a kernel, only side streams do,
or none does (:func:`timeline`). For a graphed provider (``-cg``) on one stream that is the step as it
runs (the gaps between launches included). With side streams it is not: in run236's profiled replays
one of the three branches started 90-180 µs into the step in every configuration, while the untimed
replays of the same graphs differed by a few µs (``bench/overlap_probe.py`` times those); the kernels'
own durations and order on each stream still hold. Profiling two replays and keeping the second did not
change that (run238: the main stream's first kernel 130-150 µs into the kept step, the step 0.58 ms
untimed), so one replay is profiled.
"""

from __future__ import annotations

import cProfile
import pstats

import torch

from .blocks import Unavailable
from .cases import CASES
from .presets import PRESETS
from .runner import CaseRunner
from .timing import sync, wall_us


def profile_case(case: str, preset: str, mode: str, providers: list[str], device: torch.device,
                 dtype: torch.dtype, steps: int = 10, top: int = 20, autocast: bool = True,
                 host: bool = False, with_timeline: bool = False) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from . import ceilings

    runner = CaseRunner(device, dtype, ceilings.reference_h200(), 0, 0, autocast=autocast, rotate=False)
    setup = CASES[case].factory(PRESETS[preset], device, dtype)
    inputs = [setup.make_inputs()]
    lines = [f"## {case} @ {preset}, {mode}, {str(dtype).replace('torch.', '')}, {steps} steps"]
    cache: dict = {}
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    what, unit = ("device", "kernels") if gpu else ("aten self-CPU", "aten calls")
    for provider in providers:
        try:
            calls = runner.step(provider, setup, inputs, mode, cache)
        except Unavailable as exc:  # e.g. a backend spec this case has no slot for
            lines.append(f"\n### {provider}: unavailable ({exc})")
            continue
        for _ in range(3):
            calls()
        sync(device)
        with torch_profile(activities=activities) as prof:
            wall = wall_us(calls, device, steps)
        kernels: dict[str, list[float]] = {}
        for ev in prof.events():
            if gpu and ev.device_type == torch.autograd.DeviceType.CUDA:
                us = ev.device_time
            elif not gpu and ev.name.startswith("aten::"):
                us = ev.self_cpu_time_total
            else:
                continue
            k = kernels.setdefault(ev.name, [0, 0.0, 0.0])
            k[0] += 1
            k[1] += us
            k[2] = max(k[2], us)
        total = sum(v[1] for v in kernels.values()) / steps
        launches = sum(v[0] for v in kernels.values()) / steps
        lines.append(f"\n### {provider}: wall {wall:.0f} us/step, {what} {total:.0f} us/step "
                     f"in {launches:.0f} {unit}/step\n")
        # the longest call shows a launch that differs from the kernel's others (a last pass)
        lines.append(f"| us/step | % | calls/step | longest call us | {unit[:-1]} |\n"
                     "|---:|---:|---:|---:|---|")
        for name, (n, us, longest) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
            lines.append(f"| {us / steps:.1f} | {100 * us / steps / max(total, 1e-9):.0f} | {n / steps:g} | "
                         f"{longest:.1f} | {name[:110]} |")
        if host and not provider.endswith("-cg"):
            lines.append(_host_profile(calls, device, steps, top))
        if with_timeline and gpu:
            lines.append(timeline(_step_kernels(calls, device, activities), top=3 * top))
        del calls
    lines.append(_autotuned())
    return "\n".join(lines)


def _step_kernels(calls, device: torch.device, activities) -> list[tuple[int, int, int, str]]:
    """``(start_ns, end_ns, stream, name)`` of every device activity of one step, profiled alone."""
    from torch.profiler import profile as torch_profile

    sync(device)
    with torch_profile(activities=activities) as prof:
        calls()
        sync(device)
    return [(e.start_ns(), e.end_ns(), e.device_resource_id(), e.name())
            for e in prof.profiler.kineto_results.events()
            if e.device_type() == torch.autograd.DeviceType.CUDA]


def timeline(kernels: list[tuple[int, int, int, str]], top: int = 60) -> str:
    """One step's kernels in launch order: ``kernels`` holds ``(start_ns, end_ns, stream, name)``.
    The stream with the most kernel time is the main one; the table gives each kernel's start and
    duration from the step's first start, and the summary splits the step's span into time the main
    stream runs a kernel, time only other streams do (their work the main stream waits for, or
    that finishes after it) and time no kernel runs (launch gaps, dependency waits)."""
    if not kernels:
        return "\nno device kernels in the step\n"
    kernels = sorted(kernels)
    t0 = kernels[0][0]
    busy: dict[int, int] = {}
    for start, end, stream, _ in kernels:
        busy[stream] = busy.get(stream, 0) + end - start
    order = sorted(busy, key=lambda s: -busy[s])  # the busiest first: the main stream, then side 1, ...
    main = order[0]
    label = {s: "main" if i == 0 else f"side {i}" for i, s in enumerate(order)}
    # sweep: at each boundary, whether the main stream or any stream runs a kernel
    edges = sorted({t for k in kernels for t in k[:2]})
    on_main = only_side = idle = 0
    for a, b in zip(edges, edges[1:]):
        live = {s for start, end, s, _ in kernels if start <= a and end >= b}
        if main in live:
            on_main += b - a
        elif live:
            only_side += b - a
        else:
            idle += b - a
    span = edges[-1] - t0
    lines = [f"\none step's timeline: span {span / 1e3:.1f} us; main stream running {on_main / 1e3:.1f}, "
             f"only side streams {only_side / 1e3:.1f}, no kernel {idle / 1e3:.1f} "
             f"({len(kernels)} kernels on {len(busy)} streams; "
             + ", ".join(f"{label[s]} busy {busy[s] / 1e3:.1f} us" for s in order)
             + ")\n",
             "| start us | us | gap before us | stream | kernel |", "|---:|---:|---:|---|---|"]
    last_end = {}
    for start, end, stream, name in kernels[:top]:
        gap = (start - last_end[stream]) / 1e3 if stream in last_end else 0.0
        last_end[stream] = max(end, last_end.get(stream, end))
        lines.append(f"| {(start - t0) / 1e3:.1f} | {(end - start) / 1e3:.1f} | {gap:.1f} | "
                     f"{label[stream]} | {name[:90]} |")
    if len(kernels) > top:
        lines.append(f"| | | | | ({len(kernels) - top} more) |")
    return "\n".join(lines)


def _autotuned() -> str:
    """The configuration each of the project's tuned kernels runs with, per key this process has tuned
    or loaded from the cache (a kernel slower than in another run may have picked another): Triton's
    autotuners and the project's ``TileTuner`` s."""
    import sys

    from triton.runtime.autotuner import Autotuner
    from unimixer_kernels.triton_kernels._tuning import TileTuner

    rows = []
    for modname, module in sorted(sys.modules.items()):
        if "triton_kernels" not in modname or module is None:
            continue
        for attr, obj in sorted(vars(module).items()):
            chosen = obj.cache if isinstance(obj, Autotuner) else {}
            chosen = obj.tiles if isinstance(obj, TileTuner) else chosen
            for key, cfg in chosen.items():
                rows.append(f"| {modname.rsplit('.', 1)[-1]}.{attr} | {key} | {cfg} |")
    if not rows:
        return ""
    return "\n".join(["\nautotuned kernels' configurations in this process:\n",
                      "| kernel | key | configuration |", "|---|---|---|", *sorted(set(rows))])


def _host_profile(calls, device: torch.device, steps: int, top: int) -> str:
    """The host's share of an eager step: wall time without a profiler, then ``cProfile``'s view."""
    wall = wall_us(calls, device, steps)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        calls()
    sync(device)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total_us = sum(v[2] for v in stats.values()) * 1e6 / steps
    lines = [f"\nhost: wall {wall:.0f} us/step without a profiler; under cProfile {total_us:.0f} "
             "us/step\n",
             "| own us/step | cum us/step | calls/step | function |", "|---:|---:|---:|---|"]
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    mine = [kv for kv in sorted(stats.items(), key=lambda kv: -kv[1][3])
            if any(part in kv[0][0] for part in ("unimixer_kernels", "triton_kernels"))][:top]
    for title, group in (("own time", rows), ("the project's functions, cumulative", mine)):
        lines.append(f"| | | | *{title}* |")
        for (file, line, name), (_, ncalls, tottime, cumtime, _) in group:
            where = "/".join(file.split("/")[-2:])
            lines.append(f"| {tottime * 1e6 / steps:.1f} | {cumtime * 1e6 / steps:.1f} | "
                         f"{ncalls / steps:g} | {where}:{line}({name}) |")
    return "\n".join(lines)
