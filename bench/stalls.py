"""Where a kernel's warps wait, from Nsight Compute's per-instruction page.

``bash bench/gpu_run.sh`` with ``NCU_SOURCE=1`` writes ``ncu_source.csv`` (``ncu --page source --csv
--print-source sass``): for every profiled launch, its SASS with the warp-stall samples of each
instruction. ``python -m bench stalls ncu_source.csv`` prints, per launch, the share of each stall
reason, how the samples split before, inside and after its first loop, and the instructions with
the most samples, so that "the warps wait on X" is read from the
measurement rather than guessed (e.g. a barrier before a shared-memory load that broadcasts an
atomic's result, or the first use of a global load's register).
"""

from __future__ import annotations

import csv

SAMPLES = "Warp Stall Sampling (All Samples)"


def _number(text: str) -> float:
    try:
        return float(text.replace(",", "")) if text else 0.0
    except ValueError:
        return 0.0


def read_launches(path: str) -> list[dict]:
    """The CSV's launches: ``{"kernel", "columns", "rows"}``, one per ``"Kernel Name"`` block."""
    launches: list[dict] = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "Kernel Name":
                launches.append({"kernel": row[1] if len(row) > 1 else "?", "columns": None, "rows": []})
            elif launches and launches[-1]["columns"] is None:
                launches[-1]["columns"] = row
            elif launches and row:
                launches[-1]["rows"].append(row)
    return [lc for lc in launches if lc["columns"] and SAMPLES in lc["columns"]]


def summarise(launch: dict, top: int = 12) -> str:
    """Markdown: the launch's stall reasons by share of all samples, then its ``top`` instructions."""
    col = {name: i for i, name in enumerate(launch["columns"])}
    reasons = [c for c in launch["columns"] if c.startswith("stall_") and "(Not Issued)" not in c]
    rows = launch["rows"]

    def get(r, name):
        return _number(r[col[name]]) if col[name] < len(r) else 0.0

    total = sum(get(r, SAMPLES) for r in rows) or 1.0
    shares = sorted(((sum(get(r, c) for r in rows) / total, c[len("stall_"):]) for c in reasons),
                    reverse=True)
    lines = [f"### {launch['kernel']}: {len(rows)} instructions, {int(total)} samples", "",
             "stall reasons: " + ", ".join(f"{name} {100 * s:.1f}%" for s, name in shares if s >= 0.01), ""]
    loop = first_loop(rows, col["Address"], col["Source"])
    if loop is not None:
        where = [0.0, 0.0, 0.0]  # before, inside, after the loop
        for r in rows:
            a = _address(r[col["Address"]])
            where[0 if a < loop[0] else 1 if a <= loop[1] else 2] += get(r, SAMPLES)
        lines += [f"samples before / inside / after its first loop ({loop[0]:#x}-{loop[1]:#x}): "
                  + " / ".join(f"{100 * w / total:.0f}%" for w in where), ""]
    lines += ["| % of samples | address | instruction | main reasons |", "|---:|---|---|---|"]
    for r in sorted(rows, key=lambda r: -get(r, SAMPLES))[:top]:
        main = sorted(((get(r, c), c[len("stall_"):]) for c in reasons if get(r, c) > 0), reverse=True)[:2]
        why = ", ".join(f"{name} {int(v)}" for v, name in main)
        lines.append(f"| {100 * get(r, SAMPLES) / total:.1f} | {r[col['Address']]} | "
                     f"`{r[col['Source']].strip()}` | {why} |")
    return "\n".join(lines)


def _address(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        return -1


def first_loop(rows: list, address: int, source: int) -> tuple[int, int] | None:
    """``(start, end)`` addresses of the first loop in the SASS (the lowest target of a backward branch,
    to that branch), or ``None``: where a kernel's prologue, main loop and epilogue spend their samples."""
    loops = []
    for r in rows:
        text = r[source] if source < len(r) else ""
        if "BRA" in text and "0x" in text:
            at, target = _address(r[address]), _address("0x" + text.rsplit("0x", 1)[1].strip())
            if 0 <= target < at:
                loops.append((target, at))
    return min(loops) if loops else None


def report(path: str, top: int = 12) -> str:
    launches = read_launches(path)
    if not launches:
        raise ValueError(f"{path}: no launch with a {SAMPLES!r} column (was it written by "
                         "`ncu --page source --csv` from a report with the SourceCounters section?)")
    return "\n\n".join(summarise(lc, top) for lc in launches)
