"""The one-launch second pass of the weight-gradient reductions (``triton_kernels/_partials.py``):
``out = partial.sum(0)`` for several buffers at once, deterministic, cast to each output's dtype."""

import pytest
import torch
from unimixer_kernels.triton_kernels._partials import MAX_ROWS, MAX_SEGMENTS, sum_partials

# (P, output shape): one partial row, a single output element, P past one tile of rows (the
# RMSNorm backward's one row per program) and not a power of two, an output of several tiles, an
# empty sum (P = 0: zeros), and many rows over few outputs (tiles of more than MAX_ROWS rows,
# several steps of them: the fused FFN's norm-weight partials)
CASES = [((1, 37), torch.float32), ((3, 1), torch.float16), ((2 * MAX_ROWS + 5, 24), torch.float32),
         ((6, 5, 7, 130), torch.float32), ((64, 16, 4, 4), torch.float16), ((0, 9), torch.float32),
         ((8 * MAX_ROWS + 3, 130), torch.float32)]


def _pairs(cases, device):
    return [(torch.randn(shape, device=device), torch.full(shape[1:], float("nan"), device=device, dtype=dt))
            for shape, dt in cases]


@pytest.mark.triton
@pytest.mark.parametrize("count", [1, 2, MAX_SEGMENTS, MAX_SEGMENTS + 1])
def test_sum_partials_matches_fp64_sum(device, count):
    cases = (CASES * 2)[:count] if count > 1 else CASES[2:3]
    pairs = _pairs(cases, device)
    sum_partials(*pairs)
    for part, out in pairs:
        exact = part.double().sum(0)
        # fp32 accumulation, then one rounding to the output dtype
        tol = 1e-5 * (part.shape[0] + 1) * part.double().abs().sum(0).max().clamp_min(1).item()
        tol += torch.finfo(out.dtype).eps * exact.abs().max().clamp_min(1).item()
        assert not out.isnan().any()
        assert (out.double() - exact).abs().max().item() <= tol


@pytest.mark.triton
def test_sum_partials_every_segment_lands_in_its_output(device):
    # each segment a different constant: an output filled from another segment's buffer would show
    cases = (CASES * 2)[:MAX_SEGMENTS + 2]  # past one launch: the next launch's segments too
    nan = float("nan")
    pairs = [(torch.full(shape, float(k + 1), device=device), torch.full(shape[1:], nan, device=device))
             for k, (shape, _) in enumerate(cases)]
    sum_partials(*pairs)
    for k, ((shape, _), (_, out)) in enumerate(zip(cases, pairs)):
        assert torch.equal(out, torch.full(shape[1:], float((k + 1) * shape[0]), device=device))


@pytest.mark.triton
def test_sum_partials_is_deterministic(device):
    part = torch.randn(2 * MAX_ROWS + 3, 50, device=device) * 1e3
    outs = []
    for _ in range(3):
        out = torch.empty(50, device=device)
        sum_partials((part, out))
        outs.append(out)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.triton
def test_sum_partials_sums_16bit_rows(device):
    """16-bit rows (a bias gradient's ``dO``) are summed in fp32 as they are, not rounded per step."""
    rows = torch.randn(300, 70, device=device).half()
    out = torch.full((70,), float("nan"), device=device)
    sum_partials((rows, out))
    exact = rows.double().sum(0)
    assert (out.double() - exact).abs().max().item() <= 1e-5 * 300 * rows.double().abs().sum(0).max().item()


def test_sum_partials_bad_input(device):
    part = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="pairs"):
        sum_partials()
    with pytest.raises(ValueError, match=rf"pairs\[{MAX_SEGMENTS}\].*shape"):  # in the second launch
        good, bad = (part, torch.empty(8, device=device)), (part, torch.empty(4, device=device))
        sum_partials(*[good] * MAX_SEGMENTS, bad)
    with pytest.raises(ValueError, match=r"pairs\[0\].*floating-point"):
        sum_partials((part.to(torch.int32), torch.empty(8, device=device)))
    with pytest.raises(ValueError, match=r"pairs\[0\].*shape"):
        sum_partials((part, torch.empty(4, device=device)))
    with pytest.raises(ValueError, match=r"pairs\[0\].*contiguous"):
        sum_partials((part.t().contiguous().t(), torch.empty(8, device=device)))
