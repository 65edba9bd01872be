"""Probe: what the per-token FFN kernels' autotuners choose from one fresh process to the next, and what
the choice costs the all-Triton UniMixer block's training step at ``paper-small``.

``python -m bench.tuning_probe [--processes 3] [--switch NAME=value1,value2]`` (CUDA). Autotuning
happens once a process (Triton's on-disk autotuning cache is off here, ``TRITON_CACHE_AUTOTUNING=0``), so
the tiles a tuner picks hold for the whole process: the spread between processes is what a user sees.
Each child process builds the block (``bench.overlap_probe._module``), times its graphed fwd+bwd step
(``_step_ms``) and reports the tile the weight kernel's tuner chose with the time it measured for
each tile, and the tile of the act kernel with the norm in front (``PRENORM``) with its tuner's times.
With ``--switch`` the children alternate its values (an environment switch, read by the kernels),
``processes`` children each.

Run251 and run252 used it with switches since removed (the weight kernel's, then the act kernel's tiles
timed with L2 warm, in a CUDA graph, against Triton's default): the weight kernel's choice was the same
either way in every process, while the act kernel's varied between processes and set the step's spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def _tile(cfg) -> str:
    sizes = "x".join(str(cfg.kwargs[n]) for n in ("BLOCK_S", "BLOCK_H") if n in cfg.kwargs)
    return f"{sizes} w{cfg.num_warps} s{cfg.num_stages}"


def _act_times(k) -> dict[str, list[float]]:
    """µs a tile, in the order the act kernel's tuner timed them: each round of ``_tuning.fastest``, or
    Triton's autotuner's single median."""
    for times in k._PRENORM_TIMES.values():
        return {_tile(c): [round(1e3 * t, 1) for t in ts] for c, ts in times.items()}
    timings = getattr(k.ffn_bwd_act, "configs_timings", None) or {}
    return {_tile(c): [round(1e3 * (t[0] if isinstance(t, (list, tuple)) else t), 1)]
            for c, t in timings.items()}


def _child() -> None:
    import torch
    from unimixer_kernels.triton_kernels import pswiglu as k

    from .overlap_probe import _module, _step_ms
    from .presets import get_preset

    preset = get_preset("paper-small")
    ms = _step_ms(_module(preset, False, 1, "triton", True), preset)
    weight = k.ffn_bwd_weight_kernel
    timings = getattr(weight, "configs_timings", None) or {}
    best = getattr(weight, "best_config", None)
    out = dict(ms=ms, weight=_tile(best) if best is not None else None,
               weight_us={_tile(c): round(1e3 * (t[0] if isinstance(t, (list, tuple)) else t), 1)
                          for c, t in timings.items()},
               act=[_tile(c) for c in k._PRENORM_TILES.values()],
               act_us=_act_times(k))
    torch.cuda.synchronize()
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tuning_probe", description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--switch", default=None, help="NAME=value1,value2,...: alternate its values")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child()
        return
    name, values = None, [None]
    if args.switch:
        name, _, rest = args.switch.partition("=")
        values = [v for v in rest.split(",") if v]
        if not name or not values:
            ap.error(f"--switch: expected NAME=value1,value2,..., got {args.switch!r}")
    import torch

    from .env import header

    if not torch.cuda.is_available():
        raise SystemExit("bench.tuning_probe: needs a CUDA device")
    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    print("\nUniMixerBlock at paper-small, all-Triton, graphed fwd+bwd, one fresh process a row "
          "(TRITON_CACHE_AUTOTUNING=0)\n")
    print(f"| process | {name or 'switch'} | step ms | weight tile chosen | the tuner's µs a tile (median) | "
          "act tile (PRENORM) |\n|---:|---|---:|---|---|---|")
    for i in range(args.processes):
        for value in values:
            env = dict(os.environ, TRITON_CACHE_AUTOTUNING="0", **({name: value} if name else {}))
            done = subprocess.run([sys.executable, "-m", "bench.tuning_probe", "--child"], env=env,
                                  capture_output=True, text=True, timeout=300)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                print(f"| {i} | {value or '–'} | failed: {tail[0][:200]} | | | |", flush=True)
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            ranked = sorted(r["weight_us"].items(), key=lambda kv: kv[1])
            tuned = ", ".join(f"{t} {us}" for t, us in ranked)
            act = ", ".join(r["act"])
            if r.get("act_us"):
                act += " (tuner, in the order timed: " + "; ".join(
                    f"{t} {statistics.median(us)}" + (f" [{', '.join(map(str, us))}]" if len(us) > 1 else "")
                    for t, us in r["act_us"].items()) + ")"
            print(f"| {i} | {value or '–'} | {r['ms']:.4f} | {r['weight']} | {tuned} | {act} |", flush=True)


if __name__ == "__main__":
    main()
