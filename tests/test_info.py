"""``python -m unimixer_kernels.info``: versions, device, build, backends, and the ops matrix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import unimixer_kernels as uk
from unimixer_kernels import info
from unimixer_kernels._registry import Op

ROOT = Path(__file__).resolve().parents[1]


def test_module_runs_and_prints_every_section():
    out = subprocess.run(
        [sys.executable, "-m", "unimixer_kernels.info"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in (
        f"unimixer-kernels: {uk.__version__}",
        f"torch: {torch.__version__}",
        "triton:",
        "python:",
        "device:",
        "CUDA extension (unimixer_kernels._C):",
        "backends:",
        "ops x backends",
        "auto on CUDA",
        "under autocast",
    ):
        assert needle in text, needle
    for name in uk.BACKENDS:
        assert f"  {name}: " in text, name
    for name in uk.OPS:
        assert f"\n  {name} " in text, name


def test_report_in_process_lists_every_op():
    text = info.report()
    assert all(name in text for name in uk.OPS)


def test_device_line_says_why_when_there_is_none():
    line = info.device_description()
    if torch.cuda.is_available():
        assert line.startswith("cuda:")
    else:
        assert line.startswith("none: ")


def test_extension_lines_say_whether_it_loads():
    lines = info.extension_description()
    assert any(line == "loads: yes" or line.startswith("loads: no: ") for line in lines)


def test_cells_are_yes_no_reason_or_dash():
    op = Op("probe")
    op.register("reference")(lambda: None)
    assert info.cell(op, "reference") == "yes"
    assert info.cell(op, "cuda") == "-"
    op.register("cuda")(lambda: None)
    ok, why = uk.backend_status("cuda")
    assert info.cell(op, "cuda") == ("yes" if ok else f"no: {why}")


def test_auto_choice_on_cuda():
    op = Op("probe", cuda_auto=("triton",))
    op.register("reference")(lambda: None)
    assert info.auto_choice_on_cuda(op) == "reference"  # no triton implementation: never picked
    op.register("triton")(lambda: None)
    choice = info.auto_choice_on_cuda(op)
    if torch.cuda.is_available():
        assert choice == ("triton" if uk.backend_status("triton")[0] else "reference")
    else:
        assert choice == "triton > reference"


def test_auto_choice_on_cuda_names_a_backend_that_takes_only_some_calls():
    op = Op("probe", cuda_auto=("cuda",))
    op.register("reference")(lambda: None)
    op.register("cuda", auto_accepts=lambda *args: True)(lambda: None)
    choice = info.auto_choice_on_cuda(op)
    if torch.cuda.is_available() and not uk.backend_status("cuda")[0]:
        assert choice == "reference"
    else:
        assert choice == "cuda (the calls it takes) > reference"


def test_versions_name_every_component():
    assert set(info.versions()) == {"unimixer-kernels", "torch", "CUDA (torch)", "triton", "python"}


def test_report_states_each_ops_autocast_policy():
    from unimixer_kernels.info import report

    rows = [line for line in report().splitlines() if line.startswith("  ") and line.split()]
    lines = {line.split()[0]: line for line in rows}
    assert lines["unimixing"].rstrip().endswith("autocast dtype")
    assert lines["sinkhorn"].rstrip().endswith("fp32")
    assert lines["rms_norm"].rstrip().endswith("input dtypes")


def test_info_lists_the_kernel_switches(monkeypatch):
    monkeypatch.setenv("UNIMIXER_UNIMIXING_NORM", "fused")
    text = info.report()
    assert "UNIMIXER_UNIMIXING_NORM: 'fused'" in text
    assert "UNIMIXER_SINKHORN_PERSISTENT: not set (auto)" in text


def test_info_shows_the_backend_variable_and_says_when_it_is_invalid(monkeypatch):
    monkeypatch.setenv("UNIMIXER_BACKEND", "triton+sinkhorn=cuda/triton")
    assert "UNIMIXER_BACKEND: 'triton+sinkhorn=cuda/triton'\n" in info.report()
    monkeypatch.setenv("UNIMIXER_BACKEND", "triton+sinkhorn=cudnn")
    assert ("UNIMIXER_BACKEND: 'triton+sinkhorn=cudnn': invalid, every op call raises: environment variable "
            "UNIMIXER_BACKEND: sinkhorn='cudnn'") in info.report()
