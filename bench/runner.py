"""Run cases: build each provider, time each mode, attach the floor, write JSON + CSV.

Providers of a case, in order:

* ``reference``: the reference functions, eager;
* ``compiled``: ``torch.compile`` of the reference (default mode, ``dynamic=False``);
* ``compiled-cg``: ``torch.compile(mode="reduce-overhead")`` (CUDA graphs; GPU only), with
  ``torch.compiler.cudagraph_mark_step_begin()`` before every call;
* one per kernel backend of the op (``triton``, ``cuda``; blocks: their ``uk.nn`` module);
* ``<backend>-cg``: that backend's whole step captured once in a ``torch.cuda.CUDAGraph`` and
  replayed (GPU only), for launch-bound cases;
* blocks: ``<backend>-compiled-cg``, ``torch.compile(mode="reduce-overhead")`` of the block on that
  backend (GPU only): the route a training loop takes to CUDA graphs without capturing by hand.

Modes: ``fwd`` (training forward, autograd recording), ``bwd`` (``autograd.grad`` of a retained
graph), ``fwd+bwd``, ``infer`` (``no_grad``; modules in eval mode, cached mixing weights).
On a GPU, activations are bf16 and every provider runs under ``torch.autocast(bfloat16)`` (the
PERF.md baseline); the reference then runs its GEMMs in bf16 like the kernels.

When one input set fits in L2, several fresh sets are cycled (``do_bench`` also clears L2 before
every call). Every failure becomes a row: ``unavailable: why`` or ``error: why``.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import itertools
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from . import model, timing
from .blocks import Unavailable
from .cases import Case, Impl, Setup, randn_cpu
from .presets import Preset

COMPILE_PROVIDERS = ("compiled", "compiled-cg")
KERNEL_COMPILE_CG = "-compiled-cg"  # suffix of a block's kernel backend under compile-cg
ROW_FIELDS = ("case", "preset", "bs", "mode", "provider", "status", "ms", "floor_ms", "ratio_to_floor",
              "speedup_vs_best_compile", "peak_mib", "bytes", "flops", "bound", "floor_note", "dtype",
              "first_call_s", "input_sets", "note")


def providers_for(case: Case, only: list[str] | None = None, quick: bool = False) -> list[str]:
    """The case's providers in order; ``only``: those of them; ``quick`` leaves out the blocks'
    compile-cg on their kernels (one more compile a block) unless ``only`` names them."""
    backends = case.kernel_backends()
    compiled = [f"{b}{KERNEL_COMPILE_CG}" for b in backends] if case.module else []
    every = ["reference", *COMPILE_PROVIDERS, *backends, *(f"{b}-cg" for b in backends), *compiled]
    if only:
        return [p for p in every if p in only]
    return [p for p in every if not (quick and p in compiled)]


def _cudagraph_trees(provider: str) -> bool:
    """Whether a provider runs under torch.compile's CUDA-graph trees (not a graph captured here)."""
    return provider == "compiled-cg" or provider.endswith(KERNEL_COMPILE_CG)


def _tensors(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _leaves(inputs: tuple, params: tuple) -> list[Tensor]:
    return [t for t in inputs if isinstance(t, Tensor) and t.requires_grad] + list(params)


def _captured(provider: str) -> bool:
    """Whether a provider's step is captured here in a CUDA graph and timed as its replay."""
    return provider.endswith("-cg") and not _cudagraph_trees(provider)


def _fresh_sets(sets: list[tuple]) -> list[tuple]:
    """Input sets with fresh leaves (same storage), for a capture: a leaf's AccumulateGrad node
    remembers the stream it was made on, and one kept alive from an earlier provider's run on the
    default stream makes the captured backward sync with that stream, which invalidates the capture."""
    sets = [tuple(_fresh_leaf(t) for t in s) for s in sets]
    gc.collect()
    return sets


def _replays(calls: ModeCalls) -> Callable[[], None]:
    """One captured CUDA graph per call of ``calls`` (each run once already), replayed in turn."""
    graphs = [timing.capture_graph(c) for c in calls.calls]
    cycle = itertools.cycle([g for g, _ in graphs])

    def step() -> None:
        next(cycle).replay()

    step.graphs = graphs  # the captured outputs live as long as the step
    return step


def _fresh_leaf(t):
    return t.detach().requires_grad_() if isinstance(t, Tensor) and t.requires_grad else t


def _grad_outputs(out) -> tuple[list[Tensor], list[Tensor]]:
    outs = [t for t in _tensors(out) if t.requires_grad]
    return outs, [randn_cpu(t.shape, t.device, t.dtype) for t in outs]


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


class ModeCalls:
    """One zero-argument call per input set that runs ``mode`` once (what is timed and captured)."""

    def __init__(self, impl: Impl, sets: list[tuple], mode: str, device: torch.device, autocast: bool,
                 mark_step: Callable[[], None] | None = None):
        self.calls: list[Callable[[], object]] = []
        self.keep: list = []
        mark = mark_step or (lambda: None)
        fwd = impl.fwd
        infer = impl.infer or impl.fwd
        for inputs in sets:
            leaves = _leaves(inputs, impl.params)
            if mode == "infer":
                def call(inputs=inputs):
                    with torch.no_grad(), _autocast(device, autocast):
                        mark()
                        return infer(*inputs)
            elif mode == "fwd":
                def call(inputs=inputs):
                    with _autocast(device, autocast):
                        mark()
                        return fwd(*inputs)
            elif mode == "fwd+bwd":
                with _autocast(device, autocast):
                    mark()
                    _, gouts = _grad_outputs(fwd(*inputs))

                def call(inputs=inputs, leaves=leaves, gouts=gouts):
                    with _autocast(device, autocast):
                        mark()
                        outs = [t for t in _tensors(fwd(*inputs)) if t.requires_grad]
                    return torch.autograd.grad(outs, leaves, gouts, allow_unused=True)
            elif mode == "bwd":
                with _autocast(device, autocast):
                    mark()
                    outs, gouts = _grad_outputs(fwd(*inputs))
                self.keep.append(outs)

                def call(outs=outs, leaves=leaves, gouts=gouts):
                    return torch.autograd.grad(outs, leaves, gouts, retain_graph=True, allow_unused=True)
            else:
                raise ValueError(mode)
            self.calls.append(call)
        self._cycle = itertools.cycle(self.calls)

    def __call__(self):
        return next(self._cycle)()


class CaseRunner:
    def __init__(self, device: torch.device, dtype: torch.dtype, ceilings, warmup_ms: float, rep_ms: float,
                 autocast: bool = True, rotate: bool = True):
        self.device = device
        self.dtype = dtype
        self.ceilings = ceilings
        self.warmup_ms = warmup_ms
        self.rep_ms = rep_ms
        self.autocast = autocast
        self.rotate = rotate

    # --- providers ---------------------------------------------------------------------------

    def step(self, provider: str, setup: Setup, inputs: list[tuple], mode: str, cache: dict) -> ModeCalls:
        """One ``mode`` step of ``provider`` over ``inputs``, prepared and ready to call (the
        profiling and memory tools run it outside the timed harness); a kernel provider's ``-cg``
        step is run once, captured, and called as its graph's replay, as the harness times it."""
        impl, mark = self.impl_for(provider, setup, cache, mode)
        if impl.prepare:
            impl.prepare(mode)
        if not _captured(provider):
            return ModeCalls(impl, inputs, mode, self.device, self.autocast, mark)
        calls = ModeCalls(impl, _fresh_sets(inputs), mode, self.device, self.autocast, mark)
        calls()
        timing.sync(self.device)
        return _replays(calls)

    def impl_for(self, provider: str, setup: Setup, cache: dict,
                 mode: str = "") -> tuple[Impl, Callable | None]:
        """The implementation a provider runs, and its per-call step marker (compiled-cg).

        ``bwd`` of a compiled provider gets its own compile (a separate code object, so no cache entry
        is shared) without donated buffers: a retained-graph backward cannot run on donated buffers.
        """
        gpu = self.device.type == "cuda"
        if mode == "bwd" and provider.endswith("-cg") and provider != "compiled-cg":
            # autograd runs a backward on the streams its forward ran on; a forward run before the
            # capture ran outside the capture stream, so the backward cannot be captured
            raise Unavailable("a backward alone cannot be captured (its forward ran outside the graph); "
                              "see fwd+bwd")
        key = f"{provider}:bwd" if (provider in COMPILE_PROVIDERS and mode == "bwd") else provider
        if key in cache:
            return cache[key]
        if provider == "reference":
            result = (setup.impls["reference"](), None)
        elif provider in COMPILE_PROVIDERS:
            cg = provider == "compiled-cg"
            if cg and not gpu:
                raise Unavailable("CUDA graphs need a CUDA device")
            result = _compiled(self.impl_for("reference", setup, cache)[0], cg, retained=mode == "bwd")
        elif provider.endswith(KERNEL_COMPILE_CG):
            if not gpu:
                raise Unavailable("CUDA graphs need a CUDA device")
            result = _compiled(self.impl_for(provider.removesuffix(KERNEL_COMPILE_CG), setup, cache)[0], True)
        elif provider.endswith("-cg"):
            if not gpu:
                raise Unavailable("CUDA graphs need a CUDA device")
            result = self.impl_for(provider[:-3], setup, cache)
        else:
            if provider not in setup.impls:
                raise Unavailable(f"no {provider} backend")
            if not gpu and provider == "triton":
                from unimixer_kernels._registry import triton_interpreter_on

                if triton_interpreter_on():
                    raise Unavailable("TRITON_INTERPRET=1: interpreter timings mean nothing (checked only)")
            result = (setup.impls[provider](), None)
        cache[key] = result
        return result

    # --- one case ----------------------------------------------------------------------------

    def input_sets(self, setup: Setup) -> list[tuple]:
        first = setup.make_inputs()
        n = 1
        if self.rotate and self.device.type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 50 << 20)
            size = sum(t.numel() * t.element_size() for t in first if isinstance(t, Tensor))
            if size < l2:
                n = min(4, 1 + l2 // max(size, 1))
        return [first] + [setup.make_inputs() for _ in range(n - 1)]

    def floor(self, case: Case, preset: Preset, mode: str) -> dict:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        alts = model.traffic(case.name, preset, mode, elem)
        seconds, best = model.floor_of(alts, self.ceilings.copy_bytes_per_s, self.ceilings.matmul_flops_per_s)
        mem = best.bytes / self.ceilings.copy_bytes_per_s >= best.flops / self.ceilings.matmul_flops_per_s
        return {"floor_ms": seconds * 1e3, "bytes": best.bytes, "flops": best.flops,
                "bound": "memory" if mem else "compute", "floor_note": best.note}

    def run_case(self, case: Case, preset: Preset, modes: tuple[str, ...], providers: list[str],
                 progress=None) -> list[dict]:
        self._reset()
        rows: list[dict] = []
        base = {"case": case.name, "preset": preset.name, "bs": preset.sizes.get("bs"),
                "dtype": str(self.dtype).replace("torch.", "")}
        floors = {}
        for m in modes:
            try:
                floors[m] = self.floor(case, preset, m)
            except Exception as exc:  # a model bug must not cost the measurement
                floors[m] = {"floor_note": f"no floor: {_short(exc)}"}
        try:
            setup = case.factory(preset, self.device, self.dtype)
            sets = self.input_sets(setup)
        except Exception as exc:
            for provider in providers:
                for mode in modes:
                    rows.append({**base, **floors[mode], "mode": mode, "provider": provider,
                                 "status": f"error: setup: {_short(exc)}"})
                    _tick(progress, case, preset, mode, provider)
            return rows
        cache: dict = {}
        # providers in their listed order, the kernels' CUDA-graph rows last: a failed capture leaves
        # the process's CUDA generator unusable, and a later fresh torch.compile draws from it
        for provider in providers:
            for mode in modes:
                row = {**base, **floors[mode], "mode": mode, "provider": provider, "input_sets": len(sets)}
                row.update(self._measure(provider, setup, sets, mode, cache))
                if row.get("ms") and row.get("floor_ms"):
                    row["ratio_to_floor"] = row["ms"] / row["floor_ms"]
                rows.append(row)
                _tick(progress, case, preset, mode, provider, row)
            if _cudagraph_trees(provider):
                _reset_cudagraph_trees()
        del cache, sets, setup
        self._reset()
        return rows

    def _measure(self, provider: str, setup: Setup, sets: list[tuple], mode: str, cache: dict) -> dict:
        try:
            impl, mark = self.impl_for(provider, setup, cache, mode)
        except Unavailable as exc:
            return {"status": f"unavailable: {exc}"}
        except Exception as exc:
            return {"status": f"error: {_short(exc)}"}
        try:
            if impl.prepare:
                impl.prepare(mode)
            use_sets = sets[:1] if (mode == "bwd" and provider == "compiled-cg") else sets
            captured = _captured(provider)
            if captured:
                use_sets = _fresh_sets(use_sets)
            no_donation = provider in COMPILE_PROVIDERS and mode == "bwd"
            t0 = time.perf_counter()
            with _no_donated_buffers() if no_donation else contextlib.nullcontext():
                calls = ModeCalls(impl, use_sets, mode, self.device, self.autocast, mark)
                out = calls()
            timing.sync(self.device)
            first = time.perf_counter() - t0
            del out
            note = ""
            step: Callable[[], object] = calls
            if captured:
                step = _replays(calls)
                note = "CUDA-graph replay; peak memory of the replay only (graph pool not comparable)"
            elif _cudagraph_trees(provider):
                note = "cudagraph trees; peak memory not comparable (private pool)"
            ms = timing.time_ms(step, self.device, self.warmup_ms, self.rep_ms)
            peak = timing.peak_mib(step, self.device)
            result = {"status": "ok", "ms": ms, "peak_mib": peak, "first_call_s": first,
                      "input_sets": len(use_sets), "note": note}
            del step, calls
            return result
        except Unavailable as exc:
            return {"status": f"unavailable: {exc}"}
        except Exception as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return {"status": f"error: {_short(exc)}", "note": _where(exc)}

    def _reset(self) -> None:
        torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def _compiled(impl: Impl, cg: bool, retained: bool = False) -> tuple[Impl, Callable | None]:
    """``impl`` under ``torch.compile`` (``dynamic=False``; ``cg``: ``mode="reduce-overhead"``, with its
    step marker), its forward through a twin code object where ``retained`` (``bwd``)."""
    cmode = "reduce-overhead" if cg else None
    fwd = torch.compile(_retained_graph_twin(impl.fwd) if retained else impl.fwd, mode=cmode, dynamic=False)
    infer = torch.compile(impl.infer, mode=cmode, dynamic=False) if impl.infer else None
    mark = torch.compiler.cudagraph_mark_step_begin if cg else None
    return Impl(fwd, impl.params, infer, impl.prepare), mark


def _reset_cudagraph_trees() -> None:
    # free the trees' private pools and state before anything else captures in this process
    try:
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees
    except ImportError:
        return
    reset_cudagraph_trees()


def _retained_graph_twin(fn: Callable) -> Callable:
    def retained_graph_twin(*args):
        return fn(*args)
    return retained_graph_twin


def _no_donated_buffers():
    import torch._functorch.config as fconfig

    if hasattr(fconfig, "donated_buffer"):
        return fconfig.patch(donated_buffer=False)
    return contextlib.nullcontext()


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return msg[:limit] + ("..." if len(msg) > limit else "")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def _tick(progress, case, preset, mode, provider, row=None) -> None:
    if progress is None:
        return
    tail = ""
    if row is not None:
        tail = f" {row['ms']:.3f} ms" if row.get("status") == "ok" else f" {row.get('status', '')[:40]}"
    progress.update(f"{case.name} {preset.name} {mode} {provider}{tail}")


def add_speedups(rows: list[dict]) -> list[dict]:
    """``speedup_vs_best_compile``: the fastest of compiled and compiled-cg (same case, preset, bs and
    mode) divided by this row's ms."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r.get("provider") in COMPILE_PROVIDERS and r.get("status") == "ok":
            key = (r["case"], r["preset"], r["bs"], r["mode"])
            best[key] = min(best.get(key, math.inf), r["ms"])
    for r in rows:
        b = best.get((r["case"], r["preset"], r["bs"], r["mode"]))
        r["speedup_vs_best_compile"] = b / r["ms"] if (b and r.get("status") == "ok") else None
    return rows


def write_results(out_dir: Path, name: str, header: dict, rows: list[dict]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = add_speedups(rows)
    jpath = out_dir / f"{name}.json"
    cpath = out_dir / f"{name}.csv"
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"header": header, "rows": rows}, indent=1, default=str))
    tmp.replace(jpath)
    with cpath.open("w", newline="") as f:
        for key, value in header.items():
            f.write(f"# {key}: {json.dumps(value, default=str)}\n")
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(r.get(k)) for k in ROW_FIELDS})
    return jpath, cpath


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def load_results(path: str | Path) -> tuple[dict, list[dict]]:
    data = json.loads(Path(path).read_text())
    return data.get("header", {}), data.get("rows", [])
