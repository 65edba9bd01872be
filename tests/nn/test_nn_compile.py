"""The modules trace into one graph with ``torch.compile(fullgraph=True)``, in training and eval.

``aot_eager`` traces forward and backward without generating code, so this stays cheap on a CPU.
"""

import pytest
import torch

from unimixer_kernels import nn as uknn

MODULES = {
    "UniMixer": lambda: uknn.UniMixer(4, 8, 2, 2, iters=3),  # few iterations: a smaller graph
    "UniMixer-lite": lambda: uknn.UniMixer(4, 8, 2, 1, lite=True),
    "RankMixerBlock": lambda: uknn.RankMixerBlock(4, 8),
    "WukongLayer": lambda: uknn.WukongLayer(4, 8),
    "HeterogeneousAttention": lambda: uknn.HeterogeneousAttention(4, 8, 2),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_fullgraph_compile_train_and_eval(name):
    torch._dynamo.reset()
    m = MODULES[name]()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 4, 8, requires_grad=True)
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    y.square().sum().backward()
    assert x.grad is not None
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))
