"""The tolerance helper itself (SPEC §8): it must fail real errors and pass rounding noise."""

import pytest
import torch

from unimixer_kernels.testing import assert_close_to_reference


def _ref(n=64, scale=1.0):
    return torch.randn(n, dtype=torch.float64) * scale


def test_exact_kernel_passes():
    ref = _ref()
    assert_close_to_reference(ref.float(), ref, ref.float())


def test_unwritten_element_fails():
    ref = _ref()
    out = ref.float().clone()
    out[3] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_to_reference(out, ref, ref.float())


def test_error_beyond_factor_times_torch_fails():
    ref = _ref()
    pt = ref.bfloat16()
    out = (ref + 0.2).bfloat16()
    with pytest.raises(AssertionError, match=r"2.0 \* max\|torch"):
        assert_close_to_reference(out, ref, pt)


def test_fp32_rtol_catches_what_the_factor_rule_allows():
    # torch-fp32 itself off by 1e-3 (a sloppy baseline) lets the factor rule pass; rtol=1e-4 must not
    ref = _ref()
    pt = (ref * (1 + 1e-3)).float()
    out = (ref * (1 + 1e-3)).float()
    with pytest.raises(AssertionError, match="rtol=1e-4") as failure:
        assert_close_to_reference(out, ref, pt, factor=5.0)
    # the message names the worst element and how torch-fp32 fares against the same check
    worst = int(((out.double() - ref).abs() - 1e-4 * ref.abs()).argmax())
    assert f"worst element ({worst},)" in str(failure.value)
    assert "torch-fp32's largest error over the tensor is" in str(failure.value)


def test_fp32_noise_on_an_exactly_zero_gradient_passes():
    # a 1x1 Sinkhorn block has a zero gradient in fp64; the fp32 kernel returns rounding noise
    ref = torch.zeros(84, dtype=torch.float64)
    out = torch.full((84,), 1.1e-9)
    assert_close_to_reference(out, ref, torch.zeros(84), factor=5.0, name="grad")


def test_fp32_small_values_still_checked_relatively():
    ref = _ref(scale=1e-3) + 2e-3
    out = (ref * (1 + 2e-3)).float()  # 0.2% off, well above one fp32 rounding
    with pytest.raises(AssertionError):
        assert_close_to_reference(out, ref, ref.float())


def test_gradient_failure_names_torchs_one_ulp_spread():
    # a kernel whose gradient is off: the failure also says how far torch itself moves when the
    # inputs move by one ulp, so that a check beyond the dtype's reach shows as such
    from unimixer_kernels.testing import check_against_reference

    class _Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.sin()

        @staticmethod
        def backward(ctx, g):
            return g  # the derivative of sin is cos, not 1

    def fn(x, backend):
        if backend == "reference":
            return x.sin()
        return _Off.apply(x)

    x = torch.randn(32, dtype=torch.float32, requires_grad=True)
    with pytest.raises(AssertionError, match="grad of input 0") as failure:
        check_against_reference(fn, (x,), backend="triton")
    assert "on every floating input moved by one ulp" in str(failure.value)


def test_output_failure_names_torchs_one_ulp_spread():
    # an output off by far more than torch's rounding: the failure says how far torch moves when the
    # inputs move by one ulp, against the output rule's factor
    from unimixer_kernels.testing import OUTPUT_FACTOR, check_against_reference

    def fn(x, backend):
        y = x.sin()
        return y if backend == "reference" else y * (1 + 1e-3)

    x = torch.randn(32, dtype=torch.float32, requires_grad=True)
    with pytest.raises(AssertionError, match="output 0") as failure:
        check_against_reference(fn, (x,), backend="triton")
    assert "on every floating input moved by one ulp" in str(failure.value)
    assert f"above {OUTPUT_FACTOR} means" in str(failure.value)
