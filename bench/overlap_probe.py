"""Probe: the UniMixer blocks' training step with the mixing weights on the caller's stream
(``UniMixing(overlap=False)``) and on their two side streams (``on``), side by side; and on them with
the caller's stream waiting for ``W_G`` before the mixing op (``W_G waited before the op``) instead of
inside it, after the op's per-block products and casts (``PendingWeights.wait(late=True)``, what ``on``
does). ``python -m bench.overlap_probe``, CUDA. ``--timeline`` adds, per configuration, one graphed
step's kernels in start order with their streams (``bench profile --timeline``, whose caveat for side
streams holds here).

For each preset, module (one block, and unless ``--one-block`` the two-block stack ``UniMixer``), full
and Lite, and backend (the all-Triton one and the block's spec), the fwd+bwd step as the benchmark times
its graphed providers (bf16 input under bf16 autocast, fp32 parameters, ``autograd.grad`` of every output with
respect to the input and the parameters, captured once in a CUDA graph), timed as ``graph.replay()``
by ``triton.testing.do_bench`` (median, L2 cleared before each call). The configurations
alternate twice, so drift shows as a difference between the two rounds.

Earlier configurations (results under ``bench/results``): one side stream for both weights (run223),
the side streams' priorities (run225, run228), the weights' backward queued before the first norm's
backward and ``W_B``'s work before ``W_G``'s (run235-run236: slower, removed), the lowering cast one
launch a tensor against one launch for all (run235-run236: one launch faster, kept).
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch

from .env import header
from .presets import get_preset
from .timing import capture_graph, time_ms

SPECS = {False: ("triton", "triton+sinkhorn=cuda/triton"),
         True: ("triton", "triton+lite_global_weights=cuda/triton")}
ROUNDS = 2
TIMELINE_ROWS = 16  # a timeline's first kernels: the forward up to its mixing
EARLY = "W_G waited before the op"
CONFIGS = ("off", "on", EARLY)


@contextlib.contextmanager
def _config(name: str):
    """``overlap`` for the modules made inside, and for :data:`EARLY` ``PendingWeights.wait`` waiting for
    both weights at once, whatever its caller asks."""
    from unimixer_kernels.nn.unimixing import PendingWeights

    wait = PendingWeights.wait
    if name == EARLY:
        PendingWeights.wait = lambda self, late=False: wait(self, False)
    try:
        yield name != "off"
    finally:
        PendingWeights.wait = wait


def _module(preset, lite: bool, blocks: int, backend: str, overlap: bool) -> torch.nn.Module:
    from unimixer_kernels import nn as uknn

    p = preset
    kw = dict(hidden=p["h"], bias=False, backend=backend, tau=p["tau"], iters=p["iters"], overlap=overlap,
              **(dict(lite=True, rank=p["r"], bases=p["nb"]) if lite else {}))
    torch.manual_seed(0)
    if blocks == 1:
        return uknn.UniMixerBlock(p["T"], p["D"], p["B"], **kw).cuda()
    return uknn.UniMixer(p["T"], p["D"], p["B"], blocks, **kw).cuda()


def _step_ms(module: torch.nn.Module, preset, timeline: bool = False) -> float:
    x = torch.randn(preset["bs"], preset["T"], preset["D"], device="cuda", dtype=torch.bfloat16)
    x.requires_grad_()
    leaves = [x, *module.parameters()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        probe = module(x)
    outs = [probe] if isinstance(probe, torch.Tensor) else list(probe)
    gouts = [torch.randn_like(o) for o in outs]
    del probe, outs

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(x)
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        return torch.autograd.grad(out, leaves, gouts)

    graph, kept = capture_graph(step)
    ms = time_ms(graph.replay, torch.device("cuda"), 100, 400)
    if timeline:
        from torch.profiler import ProfilerActivity

        from .profiling import _step_kernels
        from .profiling import timeline as table

        kernels = _step_kernels(graph.replay, torch.device("cuda"), [ProfilerActivity.CUDA])
        print("\n".join(table(kernels, top=TIMELINE_ROWS).splitlines()[:TIMELINE_ROWS + 4]) + "\n")
    del graph, kept
    return ms


def main(presets: list[str], stacks: tuple[int, ...] = (1, 2), timeline: bool = False,
         spec_only: bool = False) -> None:
    import unimixer_kernels as uk
    from unimixer_kernels.nn.unimixing import weights_streams

    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    side = weights_streams(torch.device("cuda"))
    print(f"# side streams' priorities (lower is higher): {[st.priority for st in side]}, "
          f"range {torch.cuda.Stream.priority_range()}")
    print("\nThe UniMixer blocks' training step (graphed), the mixing weights on the caller's stream (off) "
          "or on two side streams (on), and on them with W_G waited for before the mixing op\n")
    head = ("| preset | module | backend | " + " | ".join(f"{c}, ms" for c in CONFIGS)
            + f" | on against off, µs | {EARLY} against on, µs |\n|---|---|---|"
            + "---:|" * (len(CONFIGS) + 2))
    print(head)
    rows: list[str] = []
    for name in presets:
        preset = get_preset(name)
        for lite in (False, True):
            for blocks in stacks:
                for backend in SPECS[lite][1:] if spec_only else SPECS[lite]:
                    ok, why = uk.backend_status(backend)
                    label = ("UniMixerBlock" if blocks == 1 else "UniMixer, 2 blocks") + (" Lite" * lite)
                    if not ok:
                        empty = " |" * (len(CONFIGS) + 1)
                        rows.append(f"| {name} | {label} | `{backend}` | unavailable: {why} |{empty}")
                        print(rows[-1])
                        continue
                    times = {c: [] for c in CONFIGS}
                    for r in range(ROUNDS):
                        for config in CONFIGS:
                            with _config(config) as overlap:
                                module = _module(preset, lite, blocks, backend, overlap)
                                if timeline and r == 0:
                                    print(f"\n{name}, {label}, `{backend}`, {config}:")
                                times[config].append(_step_ms(module, preset, timeline and r == 0))
                            del module
                            torch.cuda.empty_cache()
                    cells = (" / ".join(f"{t:.4f}" for t in times[c]) for c in CONFIGS)
                    best = {c: min(t) for c, t in times.items()}
                    on = (best["on"] - best["off"]) * 1e3
                    one = (best[EARLY] - best["on"]) * 1e3
                    rows.append(f"| {name} | {label} | `{backend}` | {' | '.join(cells)} | {on:+.1f} "
                                f"| {one:+.1f} |")
                    print(rows[-1], flush=True)
    if timeline:  # the table again after the timelines
        print("\n".join([head, *rows]))


if __name__ == "__main__":
    # python -m bench.overlap_probe [--one-block] [--spec] [--timeline] [preset ...]: --one-block leaves the
    # two-block stacks out, --spec the all-Triton backend (the blocks' specs only)
    flags = ("--one-block", "--spec", "--timeline")
    args = [a for a in sys.argv[1:] if a not in flags]
    main(args or ["paper-small"], (1,) if "--one-block" in sys.argv[1:] else (1, 2),
         timeline="--timeline" in sys.argv[1:], spec_only="--spec" in sys.argv[1:])
