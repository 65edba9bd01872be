"""Probe: what the per-token FFN kernels' autotuners choose from one fresh process to the next, and what
the choice costs the all-Triton UniMixer block's training step at ``paper-small``.

``python -m bench.tuning_probe [--processes 3] [--switch NAME=value1,value2]`` (CUDA). Autotuning
happens once a process (Triton's on-disk autotuning cache is off here, ``TRITON_CACHE_AUTOTUNING=0``), so
the tiles a tuner picks hold for the whole process: the spread between processes is what a user sees.
Each child process builds the block (``bench.overlap_probe._module``), times its graphed fwd+bwd step
(``_step_ms``) and reports the tiles the forward kernel, the backward's weight kernel and its act kernel
with the norm in front (``PRENORM``) chose (``triton_kernels/_tuning.py``), with every tile's times round
by round.
With ``--switch`` the children alternate its values (an environment switch, read by the kernels),
``processes`` children each. With ``--tree DIR`` they alternate between this checkout and another one
(e.g. ``git archive BASE | tar -x -C DIR``), each child run from its tree with ``PYTHONPATH`` set to it:
a change timed against its base with no switch left behind. Neither tree may be installed (an
installed package's import hook could map the kernels to its own tree); each tree's kernel folder is
checked before the first child.

Run251 to run253 used it with switches since removed (the two kernels' tiles timed with L2 warm, in a
CUDA graph, by Triton's autotuner, or in rounds with the least median taken): Triton's autotuner's
choice varied between processes and set the step's spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _tile(cfg) -> str:
    sizes = "x".join(str(cfg.kwargs[n]) for n in ("BLOCK_S", "BLOCK_H") if n in cfg.kwargs)
    return f"{sizes} w{cfg.num_warps} s{cfg.num_stages}"


def _times(tuner) -> dict[str, list[float]]:
    """µs a tile of the one kind ``tuner`` (a ``TileTuner``) tuned, in the order timed, round by round."""
    for times in tuner.times.values():
        return {_tile(c): [round(1e3 * t, 1) for t in ts] for c, ts in times.items()}
    return {}


def _ranked(us: dict[str, list[float]]) -> str:
    """Each tile's least round, then its rounds: ``64x32 w4 s3 25.1 [26.0, 25.1, 25.5, 25.6]; ...``."""
    return "; ".join(f"{t} {min(ts)} [{', '.join(map(str, ts))}]" for t, ts in us.items()) or "not tuned"


# the per-token FFN's tuned kernels the probe reports: column name -> TileTuner in triton_kernels.pswiglu
_TUNERS = dict(forward="ffn_fwd_tuned", weight="ffn_bwd_weight", act="ffn_bwd_act")


def _child() -> None:
    import torch
    from unimixer_kernels.triton_kernels import pswiglu as k

    from .overlap_probe import _module, _step_ms
    from .presets import get_preset

    preset = get_preset("paper-small")
    ms = _step_ms(_module(preset, False, 1, "triton", True), preset)
    out = dict(ms=ms)
    for name, tuner in _TUNERS.items():
        kernel = getattr(k, tuner)
        out[name], out[name + "_us"] = [_tile(c) for c in kernel.tiles.values()], _times(kernel)
    torch.cuda.synchronize()
    print("RESULT " + json.dumps(out), flush=True)


def _tree_env(tree: str | None) -> tuple[dict, str | None]:
    """``(environment, cwd)`` of a child run from ``tree`` (``None``: this process's own)."""
    if tree is None:
        return {}, None
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": tree + (os.pathsep + path if path else "")}, tree


def _check_tree(tree: str) -> None:
    """Refuse to time ``tree`` unless its own kernels are the ones a child run from it imports."""
    env, cwd = _tree_env(tree)
    code = "import unimixer_kernels.triton_kernels as k; print(k.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    got = done.stdout.strip().splitlines()[-1:] or [done.stderr.strip()[-300:]]
    want = os.path.join(os.path.realpath(tree), "triton_kernels")
    if done.returncode != 0 or not os.path.realpath(got[0]).startswith(want + os.sep):
        raise SystemExit(f"bench.tuning_probe: --tree {tree}: a child run from it imports the kernels from "
                         f"{got[0]!r}, not {want}; uninstall unimixer-kernels (pip uninstall) and run both "
                         "trees from their folders")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tuning_probe", description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--switch", default=None, help="NAME=value1,value2,...: alternate its values")
    ap.add_argument("--tree", default=None,
                    help="another checkout (a folder): alternate between it and this one")
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
    trees = [None]
    if args.tree:
        if not os.path.isfile(os.path.join(args.tree, "bench", "tuning_probe.py")):
            ap.error(f"--tree: {args.tree!r} is not a checkout of this project (no bench/tuning_probe.py)")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        trees = [here, os.path.abspath(args.tree)]
        for tree in trees:
            _check_tree(tree)
    import torch

    from .env import header

    if not torch.cuda.is_available():
        raise SystemExit("bench.tuning_probe: needs a CUDA device")
    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    print("\nUniMixerBlock at paper-small, all-Triton, graphed fwd+bwd, one fresh process a row "
          "(TRITON_CACHE_AUTOTUNING=0)\n")
    print(f"| process | tree | {name or 'switch'} | step ms | forward kernel: tile (µs a tile, in the order "
          "timed, the fastest round [rounds]) | weight kernel: likewise | act kernel (PRENORM): likewise |\n"
          "|---:|---|---|---:|---|---|---|")
    for i in range(args.processes):
        for tree in trees:
            for value in values:
                print(f"| {i} | {tree or '–'} | {value or '–'} | {_row(tree, name, value)} |", flush=True)


def _row(tree: str | None, name: str | None, value: str | None) -> str:
    """One fresh child's cells: its step's ms and each tuner's tiles, or why it failed."""
    extra, cwd = _tree_env(tree)
    env = dict(os.environ, TRITON_CACHE_AUTOTUNING="0", **extra, **({name: value} if name else {}))
    done = subprocess.run([sys.executable, "-m", "bench.tuning_probe", "--child"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"failed: {tail[0][:200]} | | |"
    r = json.loads(lines[-1][len("RESULT "):])
    cells = [f"{', '.join(r[n])} ({_ranked(r[n + '_us'])})" for n in _TUNERS]
    return f"{r['ms']:.4f} | {' | '.join(cells)}"


if __name__ == "__main__":
    main()
