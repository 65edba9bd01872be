"""Probe: a kernel switch's values side by side in one process, on the UniMixer blocks' training step.

``python -m bench.switch_ab UNIMIXER_FFN_BACKWARD=buffers,recompute [--preset paper-small] [--rounds 3]
[--lite] [--backend SPEC,...]`` (CUDA). For each backend (default: the all-Triton block and the block's
spec, ``bench.overlap_probe.SPECS``), the graphed fwd+bwd step of one ``UniMixerBlock`` (as
``bench.overlap_probe`` times it: bf16 autocast, fp32 parameters, ``triton.testing.do_bench`` of the
graph's replay, L2 cleared) is timed with the switch set to each value in turn, the values alternating
``rounds`` times, a new module and graph each time (the switches are read as the kernels launch, so a
capture takes the value set then). Two processes disagree by more than a switch moves a step (run247),
hence one process; the rounds show the drift within it. Run248-249 compared the pSwiGLU weight
kernel's partials summed by its last program of each tile (a switch since removed) with the second
launch this way.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .env import header
from .overlap_probe import SPECS, _module, _step_ms
from .presets import get_preset


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.switch_ab", description=__doc__.splitlines()[0])
    ap.add_argument("switch", help="NAME=value1,value2,... (an environment switch: unimixer_kernels.info)")
    ap.add_argument("--preset", default="paper-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lite", action="store_true", help="the Lite block")
    ap.add_argument("--backend", default=None, help="comma-separated backend specs (default: SPECS)")
    args = ap.parse_args(argv)
    name, _, values = args.switch.partition("=")
    values = [v for v in values.split(",") if v]
    if not name or len(values) < 2:
        ap.error(f"switch: expected NAME=value1,value2,..., got {args.switch!r}")
    if not torch.cuda.is_available():
        raise SystemExit("bench.switch_ab: needs a CUDA device")
    import unimixer_kernels as uk

    backends = args.backend.split(",") if args.backend else list(SPECS[args.lite])
    preset = get_preset(args.preset)
    before = os.environ.get(name)
    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    print(f"\n{'UniMixerBlock Lite' if args.lite else 'UniMixerBlock'} at {args.preset}, graphed fwd+bwd, "
          f"{name} alternating in one process ({args.rounds} rounds), ms\n")
    print("| backend | " + " | ".join(f"`{v}`" for v in values) + f" | `{values[1]}` - `{values[0]}`, µs |")
    print("|---|" + "---:|" * (len(values) + 1))
    try:
        for backend in backends:
            ok, why = uk.backend_status(backend)
            if not ok:
                print(f"| `{backend}` | unavailable: {why} |" + " |" * len(values))
                continue
            times: dict[str, list[float]] = {v: [] for v in values}
            for _ in range(args.rounds):
                for v in values:
                    os.environ[name] = v
                    module = _module(preset, args.lite, 1, backend, True)
                    times[v].append(_step_ms(module, preset))
                    del module
                    torch.cuda.empty_cache()
            cells = " | ".join(" / ".join(f"{t:.4f}" for t in times[v]) for v in values)
            delta = (min(times[values[1]]) - min(times[values[0]])) * 1e3
            print(f"| `{backend}` | {cells} | {delta:+.1f} |", flush=True)
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


if __name__ == "__main__":
    main()
