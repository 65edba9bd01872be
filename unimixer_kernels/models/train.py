"""Train a small ranker on synthetic clicks (SPEC §11): Adam, BCE, annealed Sinkhorn temperature.

    python -m unimixer_kernels.models.train --family unimixer-lite --steps 200 --backend reference

prints the training loss and temperature every ``--log-every`` steps, then the held-out AUC,
UAUC and log loss. The default size runs on a CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ..nn import LinearAnnealing
from ..nn._common import num_parameters
from .data import make_click_dataset
from .metrics import auc, log_loss_from_logits, uauc
from .ranker import FAMILIES, Ranker


@torch.no_grad()
def evaluate(model: Ranker, data, device: torch.device | str, batch_size: int = 2048) -> dict[str, float]:
    was_training = model.training
    model.eval()
    logits = torch.cat([
        model(data.features[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(data), batch_size)
    ])
    model.train(was_training)
    return {
        "auc": auc(logits, data.labels),
        "uauc": uauc(logits, data.labels, data.users),
        "log_loss": log_loss_from_logits(logits, data.labels),
    }


def train(
    family: str = "unimixer-lite",
    steps: int = 200,
    *,
    backend: str = "reference",
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 1e-3,
    tokens: int = 8,
    dim: int = 32,
    num_blocks: int = 2,
    block: int = 4,
    num_samples: int = 25_000,
    tau_start: float = 1.0,
    tau_end: float = 0.05,
    log_every: int = 20,
    evaluate_at_end: bool = True,
    verbose: bool = True,
    **stack_options,
) -> dict:
    """Train from ``seed`` (data, initialisation and batch order all follow it).

    The model is built on the CPU and then moved, so the same seed gives the same initial
    weights on every device and backend. Returns ``{"losses": [...], "taus": [...],
    "metrics": {...}, "num_parameters": int, "seconds": float}``.
    """
    data = make_click_dataset(num_samples, seed=seed)
    train_data, test_data = data.split(0.8)
    torch.manual_seed(seed)
    model = Ranker(
        data.fields, family, tokens=tokens, dim=dim, num_blocks=num_blocks, block=block, backend=backend,
        **stack_options,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = LinearAnnealing(model, steps, tau_start, tau_end, strict=False)
    batches = train_data.batches(batch_size, torch.Generator().manual_seed(seed + 1))
    losses, taus = [], []
    start = time.perf_counter()
    if verbose:
        print(f"{family}: {num_parameters(model):,} parameters, backend={backend}, device={device}")
    for step in range(1, steps + 1):
        batch = next(batches)
        logits = model(batch.features.to(device))
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        taus.append(schedule.tau)
        schedule.step()
        losses.append(loss.item())
        if verbose and (step % log_every == 0 or step == steps):
            recent = losses[-log_every:]
            print(f"step {step:5d}  loss {sum(recent) / len(recent):.4f}  tau {taus[-1]:.3f}")
    result = {"losses": losses, "taus": taus, "num_parameters": num_parameters(model)}
    if evaluate_at_end:
        result["metrics"] = evaluate(model, test_data, device)
        if verbose:
            m = result["metrics"]
            print(f"test  AUC {m['auc']:.4f}  UAUC {m['uauc']:.4f}  log loss {m['log_loss']:.4f}")
    result["seconds"] = time.perf_counter() - start
    if verbose:
        print(f"{steps} steps in {result['seconds']:.1f} s")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="unimixer-lite")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backend", choices=("auto", "reference", "triton", "cuda"), default="reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=4, help="UniMixing block size B")
    parser.add_argument("--samples", type=int, default=25_000)
    parser.add_argument("--tau-start", type=float, default=1.0)
    parser.add_argument("--tau-end", type=float, default=0.05)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads for torch (default 1: the default model is too small to gain from more, "
        "and on a busy machine extra threads slow it down many times); 0 keeps torch's choice",
    )
    a = parser.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    return train(
        a.family, a.steps, backend=a.backend, device=a.device, seed=a.seed, batch_size=a.batch_size,
        lr=a.lr, tokens=a.tokens, dim=a.dim, num_blocks=a.blocks, block=a.block_size, num_samples=a.samples,
        tau_start=a.tau_start, tau_end=a.tau_end, log_every=a.log_every,
    )


if __name__ == "__main__":
    main()
