"""Probe: the pSwiGLU weight kernel's autotuning, 'flush' against 'warm' (``UNIMIXER_FFN_WEIGHT_TUNING``),
each in fresh processes, on the all-Triton UniMixer block's training step at ``paper-small``.

``python -m bench.tuning_probe [--processes 3]`` (CUDA). Autotuning happens once a process (Triton's
on-disk autotuning cache is off here, ``TRITON_CACHE_AUTOTUNING=0``), so whatever tile a tuner picks
holds for the whole process: the spread between processes is what a user sees. Each child process
builds the block (``bench.overlap_probe._module``), times its graphed fwd+bwd step (``_step_ms``) and
reports the tile the weight kernel's tuner chose, the time it measured for each tile, and the act
kernel's tile. The modes alternate, ``processes`` children each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODES = ("flush", "warm")


def _child() -> None:
    import torch
    from unimixer_kernels.triton_kernels import pswiglu as k

    from .overlap_probe import _module, _step_ms
    from .presets import get_preset

    preset = get_preset("paper-small")
    ms = _step_ms(_module(preset, False, 1, "triton", True), preset)

    def tile(cfg) -> str:
        kw = {**cfg.kwargs}
        return "x".join(str(kw.pop(n)) for n in ("BLOCK_S", "BLOCK_H") if n in kw) + \
            f" w{cfg.num_warps} s{cfg.num_stages}"

    weight = k.ffn_bwd_weight_kernel
    timings = getattr(weight, "configs_timings", None) or {}
    out = dict(ms=ms, weight=tile(weight.best_config) if weight.best_config else None,
               weight_us={tile(c): round(1e3 * (t[0] if isinstance(t, (list, tuple)) else t), 1)
                          for c, t in timings.items()},
               act=[tile(c) for c in k._PRENORM_TILES.values()])
    torch.cuda.synchronize()
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tuning_probe", description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child()
        return
    import torch

    from .env import header

    if not torch.cuda.is_available():
        raise SystemExit("bench.tuning_probe: needs a CUDA device")
    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    print("\nUniMixerBlock at paper-small, all-Triton, graphed fwd+bwd, one fresh process a row "
          "(TRITON_CACHE_AUTOTUNING=0)\n")
    print("| process | UNIMIXER_FFN_WEIGHT_TUNING | step ms | weight tile chosen | the tuner's µs a tile "
          "(median) | act tile |\n|---:|---|---:|---|---|---|")
    for i in range(args.processes):
        for mode in MODES:
            env = dict(os.environ, UNIMIXER_FFN_WEIGHT_TUNING=mode, TRITON_CACHE_AUTOTUNING="0")
            done = subprocess.run([sys.executable, "-m", "bench.tuning_probe", "--child"], env=env,
                                  capture_output=True, text=True, timeout=300)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                print(f"| {i} | {mode} | failed: {tail[0][:200]} | | | |", flush=True)
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            tuned = ", ".join(f"{t} {us}" for t, us in sorted(r["weight_us"].items(), key=lambda kv: kv[1]))
            print(f"| {i} | {mode} | {r['ms']:.4f} | {r['weight']} | {tuned} | {', '.join(r['act'])} |",
                  flush=True)


if __name__ == "__main__":
    main()
