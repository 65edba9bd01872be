"""Time against batch size for a case (from ``python -m bench run --sweep-bs ...``): the reference,
both compile modes, the kernel providers and the floor, on log-log axes."""

from __future__ import annotations

from pathlib import Path

from .runner import load_results

STYLE = {
    "reference": dict(color="tab:gray", marker="o"),
    "compiled": dict(color="tab:blue", marker="s"),
    "compiled-cg": dict(color="tab:cyan", marker="s", linestyle="--"),
    "triton": dict(color="tab:red", marker="^"),
    "triton-cg": dict(color="tab:orange", marker="^", linestyle="--"),
    "cuda": dict(color="tab:green", marker="v"),
    "cuda-cg": dict(color="tab:olive", marker="v", linestyle="--"),
}
# any other provider (a per-op backend spec such as ``triton+sinkhorn=cuda/triton``): these, in turn
OTHER_COLORS = ("tab:purple", "tab:brown", "tab:pink")


def _styles(providers: set[str]) -> dict[str, dict]:
    """A style per provider: ``STYLE``'s, else one colour per backend spec, dashed for its ``-cg``."""
    styles = {p: STYLE[p] for p in STYLE if p in providers}
    others = sorted({p.removesuffix("-cg") for p in providers if p not in STYLE})
    for i, spec in enumerate(others):
        color = OTHER_COLORS[i % len(OTHER_COLORS)]
        for p, extra in ((spec, {}), (f"{spec}-cg", {"linestyle": "--"})):
            if p in providers:
                styles[p] = dict(color=color, marker="D", **extra)
    return styles


def plot_sweep(results: str | Path, case: str | None = None, mode: str = "fwd+bwd",
               out: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, rows = load_results(results)
    rows = [r for r in rows if r.get("mode") == mode]
    cases = [case] if case else sorted({r["case"] for r in rows})
    written = []
    for name in cases:
        mine = [r for r in rows if r["case"] == name]
        for preset in sorted({r["preset"] for r in mine}):
            pts = [r for r in mine if r["preset"] == preset]
            bss = sorted({r["bs"] for r in pts})
            if len(bss) < 2:
                continue
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for provider, style in _styles({r["provider"] for r in pts}).items():
                xy = sorted((r["bs"], r["ms"]) for r in pts
                            if r["provider"] == provider and r.get("status") == "ok")
                if xy:
                    ax.plot(*zip(*xy), label=provider, **style)
            floor = sorted({(r["bs"], r["floor_ms"]) for r in pts if r.get("floor_ms")})
            if floor:
                ax.plot(*zip(*floor), label="floor", color="black", linestyle=":")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(f"{mode} time, ms (median)")
            ax.set_title(f"{name}, {preset}\n{header.get('device', '')}, torch {header.get('torch', '')}, "
                         f"{header.get('dtype', '')}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = Path(out) if (out and len(cases) == 1) else Path(results).with_name(
                f"{Path(results).stem}_{name}_{preset}.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written
