"""Temperature schedules (SPEC §2.2)."""

import pytest
import torch

from unimixer_kernels import nn as uknn


def test_linear_annealing_values_and_module_temperature():
    model = torch.nn.Sequential(uknn.UniMixer(4, 8, 2, 2), uknn.UnifiedMixing(4, 8, "unimixing", block=4))
    sched = uknn.LinearAnnealing(model, steps=10)
    mixings = [m for m in model.modules() if isinstance(m, uknn.UniMixing)]
    assert len(mixings) == 3
    assert sched.tau == 1.0 and all(m.tau == 1.0 for m in mixings)
    seen = [sched.step() for _ in range(12)]
    expected = [max(1.0 - 0.95 * j / 10, 0.05) for j in range(1, 13)]
    assert seen == pytest.approx(expected)
    assert seen[9] == pytest.approx(0.05) and seen[-1] == pytest.approx(0.05)
    assert all(m.tau == pytest.approx(0.05) for m in mixings)
    assert sched.tau_at(5) == pytest.approx(0.525)


def test_linear_annealing_state_dict_round_trip():
    m = uknn.UniMixing(4, 8, 2)
    sched = uknn.LinearAnnealing(m, steps=4, tau_start=2.0, tau_end=0.5)
    sched.step()
    state = sched.state_dict()
    other_module = uknn.UniMixing(4, 8, 2)
    other = uknn.LinearAnnealing(other_module, steps=4, tau_start=2.0, tau_end=0.5)
    other.load_state_dict(state)
    assert other_module.tau == pytest.approx(1.625) == m.tau


def test_two_stage_warmup():
    m = uknn.UniMixer(4, 8, 2, 1)
    sched = uknn.TwoStageWarmup(m, warmup_steps=3)
    taus = [sched.tau] + [sched.step() for _ in range(5)]
    assert taus == [1.0, 1.0, 1.0, 0.05, 0.05, 0.05]
    assert m.tau == 0.05


def test_schedule_without_unimixing():
    block = uknn.RankMixerBlock(4, 8)
    with pytest.raises(ValueError, match="module"):
        uknn.LinearAnnealing(block, steps=3)
    uknn.LinearAnnealing(block, steps=3, strict=False).step()
    assert uknn.set_temperature(block, 0.5) == 0


@pytest.mark.parametrize(
    "kwargs,name",
    [(dict(steps=0), "steps"), (dict(steps=3, tau_end=0), "tau_end"),
     (dict(steps=3, tau_start=-1), "tau_start"), (dict(steps=3, tau_start=0.1, tau_end=0.5), "tau_end"),
     (dict(steps=2.5), "steps")],
)
def test_linear_annealing_rejects_bad_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        uknn.LinearAnnealing(uknn.UniMixing(4, 8, 2), **kwargs)


def test_two_stage_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tau_final"):
        uknn.TwoStageWarmup(uknn.UniMixing(4, 8, 2), 3, tau_final=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        uknn.TwoStageWarmup(uknn.UniMixing(4, 8, 2), 0)
