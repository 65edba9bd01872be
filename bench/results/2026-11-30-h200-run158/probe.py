"""Probe: the RankMixer block's training step (bs 2048, T 16, D 768, k 4, bf16 autocast, fp32 parameters)
with the GELU passes' own tiles (forward (8, 128, 4), backward (8, 128, 2); run157's sweep of the pass
alone) against the one tile every pass took before ((16, 128, 4)), alternating three times, each under
one captured CUDA graph (``bench.timing.graph_replay_us``); the gradients compared (the bias gradients' sums
run in another order at another tile).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import pswiglu

from bench.timing import graph_replay_us
from unimixer_kernels import nn as uknn


def main() -> None:
    x = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16).requires_grad_()
    gy = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16)
    torch.manual_seed(0)
    m = uknn.RankMixerBlock(16, 768, backend="triton").cuda()
    leaves = [x, *m.parameters()]

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            y = m(x)
        return torch.autograd.grad(y, leaves, gy)

    tiles = {"own tiles": dict(pswiglu._ACT_TILE),
             "one tile": {key: (16, 128, 4) for key in pswiglu._ACT_TILE}}
    grads = {}
    for name, tile in tiles.items():
        pswiglu._ACT_TILE = tile
        grads[name] = step()
    same = all(torch.equal(a, b) for a, b in zip(grads["own tiles"], grads["one tile"]))
    diffs = [(a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-30)
             for a, b in zip(grads["own tiles"], grads["one tile"])]
    print(f"gradients bit for bit equal across the tiles: {same}; largest difference relative to each "
          f"gradient's largest magnitude: " + " ".join(f"{d:.1e}" for d in diffs), flush=True)
    for rnd in range(3):
        for name, tile in tiles.items():
            pswiglu._ACT_TILE = tile
            us = graph_replay_us(step, reps=10)
            print(f"round {rnd} RankMixer block step [{name}]: {us / 1e3:.3f} ms", flush=True)
    pswiglu._ACT_TILE = tiles["own tiles"]


if __name__ == "__main__":
    main()
