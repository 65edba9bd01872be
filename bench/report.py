"""Read results: the markdown table (README), and the regression comparison of two runs."""

from __future__ import annotations

import math
from collections import OrderedDict

from .runner import COMPILE_PROVIDERS

PROVIDER_ORDER = ("reference", "compiled", "compiled-cg", "triton", "triton-cg", "triton-compiled-cg", "cuda",
                  "cuda-cg")


def _ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _is_kernel(provider: str) -> bool:
    return provider not in ("reference", *COMPILE_PROVIDERS)


def markdown_table(header: dict, rows: list[dict], with_reasons: bool = True) -> str:
    """One line per (case, preset, bs, mode); ms per provider, the floor, the best kernel's ratio to the
    floor and its speedup over the best compile mode. Unavailable or failed cells show ``–``, with the
    reasons listed under the table."""
    providers = [p for p in PROVIDER_ORDER if any(r["provider"] == p for r in rows)]
    providers += sorted({r["provider"] for r in rows} - set(providers))
    groups: OrderedDict[tuple, dict] = OrderedDict()
    for r in rows:
        groups.setdefault((r["case"], r["preset"], r["bs"], r["mode"]), {})[r["provider"]] = r
    bss = {}
    for case, preset, bs, _ in groups:
        bss.setdefault((case, preset), set()).add(bs)
    cols = ["case", "preset", "mode", *[f"{p} ms" for p in providers], "floor ms", "best kernel / floor",
            "kernel vs best compile", "peak MiB compiled → kernel"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    reasons: OrderedDict[str, set] = OrderedDict()
    for (case, preset, bs, mode), by in groups.items():
        cells = []
        for p in providers:
            r = by.get(p)
            if r is None:
                cells.append("")
            elif r.get("status") == "ok":
                cells.append(_ms(r["ms"]))
            else:
                cells.append("–")
                reasons.setdefault(p, set()).add(r.get("status", "?"))
        ok_kernels = [r for p, r in by.items() if _is_kernel(p) and r.get("status") == "ok"]
        best = min(ok_kernels, key=lambda r: r["ms"]) if ok_kernels else None
        floor = next((r.get("floor_ms") for r in by.values() if r.get("floor_ms")), None)
        bound = next((r.get("bound") for r in by.values() if r.get("bound")), "")
        ratio = f"{best['ms'] / floor:.2f}× ({best['provider']})" if best and floor else "–"
        speed = best.get("speedup_vs_best_compile") if best else None
        speed_s = f"{speed:.2f}×" if speed else "–"
        label = preset if len(bss[(case, preset)]) == 1 else f"{preset} bs={bs}"
        floor_s = f"{_ms(floor)} ({bound[:3]})" if floor else "–"
        cells = [case, label, mode, *cells, floor_s, ratio, speed_s, _peaks(by)]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    c = header.get("ceilings") or {}
    if c:
        out += (f"\n\nCeilings measured in this run: copy {c.get('copy_TBps', 0):.3g} TB/s, matmul "
                f"{c.get('matmul_TFLOPs', 0):.3g} TFLOP/s. Floor = max(bytes / copy, FLOPs / matmul) "
                "(mem = memory-bound, com = compute-bound).")
    if with_reasons and reasons:
        out += "\n\nNot timed (–):\n" + "\n".join(
            f"- {p}: " + "; ".join(sorted(s)[:3]) + (f" (+{len(s) - 3} more)" if len(s) > 3 else "")
            for p, s in reasons.items())
    return out


def _peaks(by: dict) -> str:
    """Peak memory of default compile against the fastest kernel timed outside a CUDA graph (graph
    pools are not comparable)."""
    comp = by.get("compiled", {}).get("peak_mib")
    kernels = [r for p, r in by.items() if _is_kernel(p) and not p.endswith("-cg") and r.get("status") == "ok"
               and r.get("peak_mib") is not None]
    kern = min(kernels, key=lambda r: r["ms"])["peak_mib"] if kernels else None
    if comp is None and kern is None:
        return "–"
    return f"{'–' if comp is None else f'{comp:.0f}'} → {'–' if kern is None else f'{kern:.0f}'}"


def describe_header(header: dict) -> str:
    keys = ("device", "torch", "triton", "cuda", "date_utc", "git_commit", "dtype", "autocast")
    text = ", ".join(f"{k} {header[k]}" for k in keys if k in header)
    if header.get("stopped"):
        text += f"\n\nNote: {header['stopped']}."
    return text


def compare(old: list[dict], new: list[dict], fail_above: float) -> tuple[str, int]:
    """Rows timed in both runs: ``new ms / old ms``; the ones above ``fail_above`` are regressions."""
    def key(r):
        return (r["case"], r["preset"], r.get("bs"), r["mode"], r["provider"])

    old_ok = {key(r): r for r in old if r.get("status") == "ok"}
    lines = ["| case | preset | mode | provider | old ms | new ms | new/old |",
             "|---|---|---|---|---|---|---|"]
    regressions = 0
    lost = []
    for r in new:
        o = old_ok.get(key(r))
        if o is None:
            continue
        if r.get("status") != "ok":
            lost.append(f"{key(r)}: {r.get('status')}")
            regressions += 1
            continue
        ratio = r["ms"] / o["ms"] if o["ms"] else math.inf
        flag = " **regression**" if ratio > fail_above else ""
        regressions += bool(flag)
        lines.append(f"| {r['case']} | {r['preset']} | {r['mode']} | {r['provider']} | {_ms(o['ms'])} | "
                     f"{_ms(r['ms'])} | {ratio:.3f}{flag} |")
    text = "\n".join(lines)
    if lost:
        text += "\n\nTimed before, not now:\n" + "\n".join(f"- {x}" for x in lost)
    text += f"\n\n{regressions} regression(s) above {fail_above}×."
    return text, regressions
