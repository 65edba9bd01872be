"""Where a step's peak memory lies: ``python -m bench memory --case C --preset P [--mode M]
[--provider X]`` (CUDA only).

It runs the case's step once to warm up, then once under ``torch.cuda.memory._record_memory_history``.
It replays the allocator's trace, finds the moment of the peak, and prints the blocks alive then,
grouped by the innermost frame of this repository that allocated them (the kernel wrapper or
module line; the shared output helper of ``triton_kernels/_launch.py`` is passed over for its
caller). Then the runner-up peaks: for the sites that did not allocate at the peak, the highest
total reached as each allocated, which is where the peak would move if the top one came down, and
the blocks alive at the ``moments`` highest of them.
Only what the step allocates counts: blocks allocated before the recording (inputs, parameters,
``.grad`` buffers) are the baseline, as for the ``peak_mib`` column of the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .cases import CASES
from .presets import PRESETS

# the folders whose frames name an allocation (the innermost one wins) ...
REPO_DIRS = ("unimixer_kernels/", "triton_kernels/", "bench/")
# ... except these helpers, which every kernel wrapper calls: their caller names the allocation
HELPERS = ("triton_kernels/_launch.py",)


def _site(frames: list[dict]) -> str:
    for f in frames:  # innermost first, as the allocator records them
        name = f.get("filename", "")
        for d in REPO_DIRS:
            i = name.rfind(d)
            if i >= 0 and not name.endswith(HELPERS):
                return f"{name[i:]}:{f.get('line', '?')} ({f.get('name', '?')})"
    return "(no frame of this repository: torch internals)"


def _by_site(live: Iterable[tuple[int, str]]) -> list[tuple[str, int, int]]:
    """``(site, bytes, blocks)`` per allocating site of ``live`` ``(size, site)`` blocks, largest first."""
    sites: dict[str, list[int]] = {}
    for size, site in live:
        s = sites.setdefault(site, [0, 0])
        s[0] += size
        s[1] += 1
    return sorted(((k, v[0], v[1]) for k, v in sites.items()), key=lambda r: -r[1])


def peak_breakdown(events: Iterable[dict], runners_up: dict[str, tuple[int, list]] | None = None
                   ) -> tuple[int, list[tuple[str, int, int]]]:
    """Replay allocator trace ``events`` (``alloc`` / ``free_completed``, with ``addr``, ``size`` and
    ``frames``); return the peak of live bytes above the start and, for the blocks alive at that
    moment, ``(site, bytes, blocks)`` per allocating site, largest first. ``runners_up``, if given,
    receives per site the highest total reached as that site allocated, and the blocks alive at that
    moment (as the peak's)."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: list[tuple[int, str]] = []
    for ev in events:
        action = ev.get("action")
        if action == "alloc":
            site = _site(ev.get("frames", []))
            live[ev["addr"]] = (ev["size"], site)
            total += ev["size"]
            if runners_up is not None and total > runners_up.get(site, (0, None))[0]:
                runners_up[site] = (total, list(live.values()))
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif action == "free_completed" and ev["addr"] in live:
            total -= live.pop(ev["addr"])[0]
    if runners_up is not None:
        for site, (high, blocks) in runners_up.items():
            runners_up[site] = (high, _by_site(blocks))
    return peak, _by_site(at_peak)


def _rows_table(rows: list[tuple[str, int, int]], top: int) -> list[str]:
    lines = ["| MiB | blocks | allocated at |", "|---:|---:|---|"]
    for site, size, n in rows[:top]:
        lines.append(f"| {size / 2**20:.1f} | {n} | {site} |")
    if len(rows) > top:
        rest = sum(r[1] for r in rows[top:])
        blocks = sum(r[2] for r in rows[top:])
        lines.append(f"| {rest / 2**20:.1f} | {blocks} | ({len(rows) - top} more sites) |")
    return lines


def memory_case(case: str, preset: str, mode: str, provider: str, device: torch.device,
                dtype: torch.dtype, top: int = 20, autocast: bool = True, moments: int = 2) -> str:
    if device.type != "cuda":
        raise SystemExit("python -m bench memory records the CUDA caching allocator: it needs a CUDA device")
    from . import ceilings
    from .runner import CaseRunner
    from .timing import sync

    runner = CaseRunner(device, dtype, ceilings.reference_h200(), 0, 0, autocast=autocast, rotate=False)
    setup = CASES[case].factory(PRESETS[preset], device, dtype)
    calls = runner.step(provider, setup, [setup.make_inputs()], mode, {})
    calls()  # compiles, autotunes and allocates what persists (e.g. .grad) before the recording
    sync(device)
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    try:
        out = calls()
        sync(device)
        del out
        sync(device)
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    events = [ev for trace in snapshot["device_traces"] for ev in trace]
    highs: dict[str, tuple[int, list]] = {}
    peak, rows = peak_breakdown(events, highs)
    lines = [f"## {case} @ {preset}, {mode}, {provider}, {str(dtype).replace('torch.', '')}: "
             f"peak {peak / 2**20:.1f} MiB above the step's start", ""]
    lines += _rows_table(rows, top)
    at_peak = {r[0] for r in rows}
    others = sorted(((v[0], k) for k, v in highs.items() if k not in at_peak), reverse=True)[:5]
    if others:
        lines += ["", "Runner-up peaks: the highest total while each other site allocated", "",
                  "| MiB | while allocating at |", "|---:|---|"]
        lines += [f"| {v / 2**20:.1f} | {k} |" for v, k in others]
    # what is alive at the runner-up moments: the next peaks, once the top one comes down
    shown: set[int] = set()
    for high, site in others:
        if len(shown) == moments or high in shown:
            continue
        shown.add(high)
        lines += ["", f"Alive at {high / 2**20:.1f} MiB (while allocating at {site}):", ""]
        lines += _rows_table(highs[site][1], min(top, 12))
    return "\n".join(lines)
