"""Sinkhorn temperature schedules (SPEC §2.2), stepped by the training loop.

Both set the temperature of every :class:`UniMixing` inside a module (the UniMixing rows of a
:class:`UnifiedMixing` included) through :func:`set_temperature`.
"""

from __future__ import annotations

from torch import nn

from .._checks import check_positive
from .unimixing import UniMixing


def set_temperature(module: nn.Module, tau: float) -> int:
    """Set ``tau`` on every :class:`UniMixing` in ``module``; returns how many there were."""
    check_positive("tau", tau)
    count = 0
    for m in module.modules():
        if isinstance(m, UniMixing):
            m.set_temperature(tau)
            count += 1
    return count


def _count_or_raise(module: nn.Module, tau: float, strict: bool) -> None:
    if set_temperature(module, tau) == 0 and strict:
        raise ValueError(
            f"module: expected a module with UniMixing layers, got {type(module).__name__} with none "
            "(pass strict=False to schedule nothing)"
        )


class _Schedule:
    """Stepping and checkpoint state shared by the schedules; each defines ``tau_at(j)``."""

    module: nn.Module
    step_count: int

    def tau_at(self, j: int) -> float:
        raise NotImplementedError

    @property
    def tau(self) -> float:
        return self.tau_at(self.step_count)

    def step(self) -> float:
        """Advance one step and set the new temperature; returns it."""
        self.step_count += 1
        set_temperature(self.module, self.tau)
        return self.tau

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        set_temperature(self.module, self.tau)


class LinearAnnealing(_Schedule):
    """``tau_j = max(tau_start - (tau_start - tau_end) * j / J, tau_end)`` after ``j`` calls to
    :meth:`step` (``J = steps``); the module starts at ``tau_start``."""

    def __init__(
        self, module: nn.Module, steps: int, tau_start: float = 1.0, tau_end: float = 0.05, *,
        strict: bool = True,
    ) -> None:
        check_positive("steps", steps, integer=True)
        check_positive("tau_start", tau_start)
        check_positive("tau_end", tau_end)
        if tau_end > tau_start:
            raise ValueError(f"tau_end: expected a value <= tau_start={tau_start}, got {tau_end}")
        self.module, self.steps = module, steps
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.step_count = 0
        _count_or_raise(module, self.tau, strict)

    def tau_at(self, j: int) -> float:
        t = self.tau_start - (self.tau_start - self.tau_end) * j / self.steps
        return max(t, self.tau_end)



class TwoStageWarmup(_Schedule):
    """``tau_warm`` (default 1.0) for the first ``warmup_steps`` steps, then ``tau_final``
    (default 0.05), continuing from the weights trained so far."""

    def __init__(
        self, module: nn.Module, warmup_steps: int, tau_warm: float = 1.0, tau_final: float = 0.05, *,
        strict: bool = True,
    ) -> None:
        check_positive("warmup_steps", warmup_steps, integer=True)
        check_positive("tau_warm", tau_warm)
        check_positive("tau_final", tau_final)
        self.module, self.warmup_steps = module, warmup_steps
        self.tau_warm, self.tau_final = float(tau_warm), float(tau_final)
        self.step_count = 0
        _count_or_raise(module, self.tau, strict)

    def tau_at(self, j: int) -> float:
        return self.tau_warm if j < self.warmup_steps else self.tau_final

