"""pytest-benchmark view of the quick cases: ``pytest bench --benchmark-only`` (from the repo root).

Each test times one (case, preset, mode, provider) through the same setup factories and mode
calls as ``python -m bench``; ``extra_info`` carries the floor at PERF.md's H200 ceilings, the
bytes and the FLOPs. Providers that cannot run here are skipped with the reason. Use
``--benchmark-json FILE`` / ``--benchmark-compare`` for pytest-benchmark's own records.
"""

from __future__ import annotations

import pytest
import torch

from bench.blocks import Unavailable
from bench.cases import plan_for
from bench.ceilings import reference_h200
from bench.runner import CaseRunner, ModeCalls
from bench.timing import sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
PARAMS = [
    pytest.param(case, preset, mode, id=f"{case.name}-{preset.name}-{mode}")
    for case, preset, modes in plan_for(DEVICE.type, quick=True)
    for mode in modes
]
PROVIDERS = ["reference", "compiled", "compiled-cg", "triton", "triton-cg"]


@pytest.fixture(scope="module")
def runner() -> CaseRunner:
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    return CaseRunner(DEVICE, DTYPE, reference_h200(), warmup_ms=10, rep_ms=50)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case,preset,mode", PARAMS)
def test_bench(benchmark, runner, case, preset, mode, provider):
    runner._reset()
    setup = case.factory(preset, DEVICE, DTYPE)
    sets = runner.input_sets(setup)
    try:
        impl, mark = runner.impl_for(provider, setup, {}, mode)
    except Unavailable as exc:
        pytest.skip(f"{provider}: {exc}")
    if impl.prepare:
        impl.prepare(mode)
    calls = ModeCalls(impl, sets, mode, DEVICE, True, mark)
    step = calls
    if provider.endswith("-cg") and provider != "compiled-cg":
        from bench.timing import capture_graph

        graph, _ = capture_graph(calls.calls[0])
        step = graph.replay
    step()
    sync(DEVICE)

    def timed():
        step()
        sync(DEVICE)

    floor = runner.floor(case, preset, mode)
    benchmark.extra_info.update(case=case.name, preset=preset.name, mode=mode, provider=provider,
                                floor_ms_h200=floor["floor_ms"], bytes=floor["bytes"], flops=floor["flops"])
    benchmark.pedantic(timed, rounds=20, warmup_rounds=3, iterations=1)
