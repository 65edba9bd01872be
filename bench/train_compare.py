"""Train the same ranker with two backends from one seed and compare the loss curves.

``python -m bench train --out DIR`` writes ``DIR/train_compare.json`` (the results header with
device, versions, date and commit; both curves per family; the largest gap over steps 1-10, 1-50
and all; the seconds each run took) and ``DIR/train_compare.png``. Both runs start from the
same weights and see the same batches, so they differ only by rounding;
``tests/nn/test_nn_gpu.py`` holds the tolerances.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

WINDOWS = (10, 50, None)


def compare(families: list[str], backends: tuple[str, str], steps: int, device: str, seed: int = 0,
            num_blocks: int = 2) -> dict:
    import torch

    from unimixer_kernels.models import train as train_module

    from .env import header

    out: dict = {"header": header(torch.device(device)), "steps": steps, "device": device, "seed": seed,
                 "num_blocks": num_blocks, "backends": list(backends), "families": {}}
    for family in families:
        runs = {}
        for backend in backends:
            t0 = time.perf_counter()
            res = train_module.train(family, steps, backend=backend, device=device, seed=seed,
                                     num_blocks=num_blocks, verbose=False, evaluate_at_end=False)
            runs[backend] = {"losses": res["losses"], "seconds": round(time.perf_counter() - t0, 2)}
        a, b = (runs[x]["losses"] for x in backends)
        diff = [abs(x - y) for x, y in zip(a, b)]
        ends = sorted({min(w or steps, steps) for w in WINDOWS})
        gaps = {f"steps 1-{n}": max(diff[:n]) for n in ends}
        out["families"][family] = {"runs": runs, "max_abs_gap": gaps,
                                   "first_loss": a[0], "last_loss": a[-1]}
        print(f"{family}: " + ", ".join(f"{k} {v:.2e}" for k, v in gaps.items())
              + "; " + ", ".join(f"{x} {runs[x]['seconds']:.1f}s" for x in backends), flush=True)
    return out


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(result["families"])
    fig, axes = plt.subplots(2, len(fams), figsize=(4.2 * len(fams), 6.4), squeeze=False)
    b0, b1 = result["backends"]
    for j, fam in enumerate(fams):
        runs = result["families"][fam]["runs"]
        steps = range(1, len(runs[b0]["losses"]) + 1)
        ax = axes[0][j]
        ax.plot(steps, runs[b0]["losses"], label=b0, color="tab:gray")
        ax.plot(steps, runs[b1]["losses"], label=b1, color="tab:red", linestyle="--")
        ax.set_title(fam, fontsize=10)
        ax.set_ylabel("training loss (BCE)")
        ax.legend(fontsize=8)
        ax = axes[1][j]
        gap = [max(abs(x - y), 1e-12) for x, y in zip(runs[b0]["losses"], runs[b1]["losses"])]
        ax.semilogy(steps, gap, color="black")
        ax.set_xlabel("step")
        ax.set_ylabel(f"|loss({b1}) - loss({b0})|")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{result['num_blocks']}-block rankers, same seed, {result['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(out: str, families: list[str], backends: tuple[str, str], steps: int, device: str) -> int:
    result = compare(families, backends, steps, device)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_compare.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {folder / 'train_compare.json'}")
    try:
        print(f"wrote {plot(result, folder / 'train_compare.png')}")
    except ImportError:
        print("no plot: matplotlib is missing (pip install -e '.[bench]')")
    return 0
