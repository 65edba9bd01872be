"""Probe: the UniMixer blocks' training step with the mixing weights on the caller's stream
(``UniMixing(overlap=False)``), on one side stream (both weights, one after the other: ``weights_streams``
made to return its first stream twice), on their two side streams (``overlap=True``, both at
``WEIGHTS_PRIORITY``) and on two side streams with ``W_G``'s one step above ``W_B``'s (``GLOBAL_ABOVE``),
side by side (``python -m bench.overlap_probe``, CUDA).

For each preset, module (one block, and unless ``--one-block`` the two-block stack ``UniMixer``), full
and Lite, and backend (the all-Triton one and the block's spec), the fwd+bwd step as the benchmark times
its graphed providers (bf16 input under bf16 autocast, fp32 parameters, ``autograd.grad`` of every output with
respect to the input and the parameters, captured once in a CUDA graph), timed as ``graph.replay()``
by ``triton.testing.do_bench`` (median, L2 cleared before each call). The four configurations
alternate twice, so drift shows as a difference between the two rounds.
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
CONFIGS = ("off", "one side stream", "two side streams", "two, global above")
# W_G's stream one priority step above W_B's (lower is higher), the latter at WEIGHTS_PRIORITY
GLOBAL_ABOVE = (-2, -1)
_RANKED: dict[int, tuple[torch.cuda.Stream, torch.cuda.Stream]] = {}


def _ranked(index: int) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """Two streams on device ``index`` at the priorities ``GLOBAL_ABOVE`` (made once)."""
    if index not in _RANKED:
        _RANKED[index] = tuple(torch.cuda.Stream(index, priority=p) for p in GLOBAL_ABOVE)
    return _RANKED[index]


@contextlib.contextmanager
def _config(name: str):
    """``overlap`` for the modules made inside; for "one side stream" both weights on the first of
    ``weights_streams``, for "two, global above" on two streams of the priorities ``GLOBAL_ABOVE``."""
    from unimixer_kernels.nn import unimixing

    real = unimixing.weights_streams
    if name == "one side stream":
        unimixing.weights_streams = lambda device: (real(device)[0],) * 2
    if name == "two, global above":
        unimixing.weights_streams = lambda device: _ranked(real(device)[0].device_index)
    try:
        yield name != "off"
    finally:
        unimixing.weights_streams = real


def _module(preset, lite: bool, blocks: int, backend: str, overlap: bool) -> torch.nn.Module:
    from unimixer_kernels import nn as uknn

    p = preset
    kw = dict(hidden=p["h"], bias=False, backend=backend, tau=p["tau"], iters=p["iters"], overlap=overlap,
              **(dict(lite=True, rank=p["r"], bases=p["nb"]) if lite else {}))
    torch.manual_seed(0)
    if blocks == 1:
        return uknn.UniMixerBlock(p["T"], p["D"], p["B"], **kw).cuda()
    return uknn.UniMixer(p["T"], p["D"], p["B"], blocks, **kw).cuda()


def _step_ms(module: torch.nn.Module, preset) -> float:
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
    del graph, kept
    return ms


def main(presets: list[str], stacks: tuple[int, ...] = (1, 2)) -> None:
    import unimixer_kernels as uk
    from unimixer_kernels.nn.unimixing import weights_streams

    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    side = weights_streams(torch.device("cuda"))
    ranked = [st.priority for st in _ranked(side[0].device_index)]
    print(f"# stream priorities (lower is higher): range {torch.cuda.Stream.priority_range()}, side streams "
          f"{[st.priority for st in side]}, global above {ranked}")
    print("\nThe UniMixer blocks' training step (graphed), the mixing weights on the caller's stream, one "
          "side stream or two\n")
    print("| preset | module | backend | " + " | ".join(f"{c}, ms" for c in CONFIGS)
          + " | two against off, µs | two against one, µs |")
    print("|---|---|---|" + "---:|" * (len(CONFIGS) + 2))
    for name in presets:
        preset = get_preset(name)
        for lite in (False, True):
            for blocks in stacks:
                for backend in SPECS[lite]:
                    ok, why = uk.backend_status(backend)
                    label = ("UniMixerBlock" if blocks == 1 else "UniMixer, 2 blocks") + (" Lite" * lite)
                    if not ok:
                        empty = " |" * (len(CONFIGS) + 1)
                        print(f"| {name} | {label} | `{backend}` | unavailable: {why} |{empty}")
                        continue
                    times = {c: [] for c in CONFIGS}
                    for _ in range(ROUNDS):
                        for config in CONFIGS:
                            with _config(config) as overlap:
                                module = _module(preset, lite, blocks, backend, overlap)
                                times[config].append(_step_ms(module, preset))
                            del module
                            torch.cuda.empty_cache()
                    cells = (" / ".join(f"{t:.4f}" for t in times[c]) for c in CONFIGS)
                    best = {c: min(t) for c, t in times.items()}
                    vs_off = (best["off"] - best["two side streams"]) * 1e3
                    vs_one = (best["one side stream"] - best["two side streams"]) * 1e3
                    print(f"| {name} | {label} | `{backend}` | {' | '.join(cells)} | {vs_off:.1f} "
                          f"| {vs_one:.1f} |", flush=True)


if __name__ == "__main__":
    # python -m bench.overlap_probe [--one-block] [preset ...]: --one-block leaves the two-block stacks out
    args = [a for a in sys.argv[1:] if a != "--one-block"]
    main(args or ["paper-small"], (1,) if "--one-block" in sys.argv[1:] else (1, 2))
