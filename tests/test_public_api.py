"""SPEC §12 is a contract: the public names and their positional arguments are fixed."""

import importlib.util
import inspect

import pytest
import torch

import unimixer_kernels as uk

E = inspect.Parameter.empty

# name -> positional parameters in order, with their defaults (E: required)
OPS = {
    "sinkhorn": [("logits", E), ("tau", 1.0), ("iters", 20), ("symmetric", True)],
    "unimixing": [("x", E), ("w_local", E), ("w_global", E)],
    "unimixing_rmsnorm": [("z", E), ("w_local", E), ("w_global", E), ("norm_weight", E), ("eps", 1e-6)],
    "unimixing_rmsnorm_pswiglu": [("z", E), ("w_local", E), ("w_global", E), ("norm_weight", E),
                                  ("w_gate", E), ("w_up", E), ("w_down", E), ("b_gate", None),
                                  ("b_up", None), ("b_down", None), ("eps", 1e-6)],
    "lite_weights": [("omega", E), ("basis", E), ("a_g", E), ("b_g", E), ("tau", 1.0), ("iters", 1),
                     ("symmetric", True)],
    "lite_local_weights": [("omega", E), ("basis", E), ("tau", 1.0), ("iters", 1), ("symmetric", True)],
    "lite_global_weights": [("a_g", E), ("b_g", E), ("tau", 1.0), ("iters", 1), ("symmetric", True)],
    "token_mixer": [("x", E), ("heads", E)],
    "rms_norm": [("x", E), ("weight", E), ("eps", 1e-6)],
    "add_rms_norm": [("x", E), ("residual", E), ("weight", E), ("eps", 1e-6)],
    "pswiglu": [("u", E), ("w_gate", E), ("w_up", E), ("w_down", E), ("b_gate", None), ("b_up", None),
                ("b_down", None)],
    "fm_interaction": [("x", E), ("y", E)],
    "dot_interaction": [("x", E), ("order", "triu")],
}

MODULES = ["UniMixing", "UniMixerBlock", "UniMixer", "TokenMixer", "RankMixerBlock", "TokenMixerLargeBlock",
           "PerTokenFFN", "WukongLayer", "HeterogeneousAttention", "UnifiedMixing"]


@pytest.mark.parametrize("name", list(OPS))
def test_op_signature(name):
    fn = getattr(uk, name)
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert [(p.name, p.default) for p in positional] == OPS[name]
    backend = inspect.signature(fn).parameters["backend"]
    assert backend.kind == backend.KEYWORD_ONLY and backend.default == "auto"
    assert fn.__doc__


@pytest.mark.parametrize("name", MODULES)
def test_module_exists_with_backend_keyword(name):
    cls = getattr(uk.nn, name)
    assert issubclass(cls, torch.nn.Module) and cls.__doc__
    backend = inspect.signature(cls).parameters["backend"]
    assert backend.default == "auto"


def test_ops_run_on_cpu_through_auto():
    x = torch.randn(2, 4, 8)
    n = 16
    w_local = uk.sinkhorn(torch.randn(n, 2, 2))
    w_global = uk.sinkhorn(torch.randn(n, n))
    assert uk.unimixing(x, w_local, w_global).shape == x.shape
    assert uk.unimixing_rmsnorm(x, w_local, w_global, torch.ones(8)).shape == x.shape
    assert uk.token_mixer(x, 2).shape == (2, 2, 16)
    w_l, w_g = uk.lite_weights(torch.randn(n, 3), torch.randn(3, 2, 2), torch.randn(n, 2), torch.randn(2, n))
    assert w_l.shape == (n, 2, 2) and w_g.shape == (n, n)
    assert uk.rms_norm(x, torch.ones(8)).shape == x.shape
    assert [t.shape for t in uk.add_rms_norm(x, x, torch.ones(8))] == [x.shape, x.shape]
    w = torch.randn(4, 8, 6)
    assert uk.pswiglu(x, w, w, torch.randn(4, 6, 8)).shape == x.shape
    o = uk.unimixing_rmsnorm_pswiglu(x, w_local, w_global, torch.ones(8), w, w, torch.randn(4, 6, 8))
    assert o.shape == x.shape
    assert uk.fm_interaction(x, torch.randn(4, 3)).shape == (2, 4, 3)
    assert uk.dot_interaction(x).shape == (2, 6)


def test_backend_selection_api():
    with uk.use_backend("reference"):
        assert uk.token_mixer(torch.randn(1, 2, 2), 2).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="use_backend"):
        with uk.use_backend("fastest"):
            pass
    assert importlib.util.find_spec("unimixer_kernels.info") is not None


def test_nn_exports():
    for name in MODULES + ["LinearAnnealing", "TwoStageWarmup", "num_parameters"]:
        assert name in uk.nn.__all__


@pytest.mark.parametrize("name", ["pgelu_ffn", "token_mixer_residual_norm", "residual_norm"])
def test_extra_ops_take_keyword_backend(name):
    backend = inspect.signature(getattr(uk, name)).parameters["backend"]
    assert backend.kind == backend.KEYWORD_ONLY and backend.default == "auto"
