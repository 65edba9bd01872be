"""The benchmark harness (bench/), on the CPU in seconds: the floor model's arithmetic against
PERF.md's floors, the SPEC §10 presets, the case plans, the results files and their header, the
table, the regression comparison and the progress bar."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a top-level folder, run from the repo root, not installed
    sys.path.insert(0, str(ROOT))

from bench import model  # noqa: E402
from bench.cases import CASES, CPU_PLAN, CPU_QUICK, GPU_PLAN, GPU_QUICK, plan_for  # noqa: E402
from bench.ceilings import Ceilings, reference_h200  # noqa: E402
from bench.presets import PRESETS  # noqa: E402
from bench.progress import Progress  # noqa: E402
from bench.report import compare, markdown_table  # noqa: E402
from bench.runner import CaseRunner, add_speedups, load_results, providers_for, write_results  # noqa: E402

H200 = reference_h200()


def floor_ms(case: str, preset: str, mode: str, elem: int = 2) -> float:
    seconds, _ = model.floor_of(model.traffic(case, PRESETS[preset], mode, elem), H200.copy_bytes_per_s,
                                H200.matmul_flops_per_s)
    return seconds * 1e3


@pytest.mark.parametrize("case,preset,mode,perf_ms,rel", [
    # PERF.md's floor column (fwd+bwd unless noted), at copy 4.14 TB/s and matmul 680 TFLOP/s
    ("unimixer-block", "paper-small", "fwd+bwd", 0.114, 0.02),
    # Lite also counts the A_G @ B_G GEMM and its two gradient GEMMs (PERF.md leaves them out): +2..3%
    ("unimixer-block-lite", "paper-small", "fwd+bwd", 0.114, 0.04),
    ("unimixer-block-lite", "paper-100m", "fwd+bwd", 1.82, 0.04),
    ("unimixer-block", "paper-small", "infer", 0.04, 0.1),
    ("unimixing", "paper-small", "fwd+bwd", 0.076, 0.02),
    ("unimixing", "paper-100m", "fwd+bwd", 1.21, 0.02),
    ("unimixing", "rankmixer-100m", "fwd+bwd", 0.068, 0.02),
    ("rankmixer-block", "rankmixer-100m", "fwd+bwd", 1.36, 0.02),
    ("fm_interaction", "wukong", "fwd+bwd", 0.10, 0.1),
])
def test_floors_match_perf_md(case, preset, mode, perf_ms, rel):
    assert floor_ms(case, preset, mode) == pytest.approx(perf_ms, rel=rel)


def test_every_case_has_a_floor_at_every_preset_it_applies_to():
    for case in CASES.values():
        assert case.name in model.MODELS, case.name
        for preset in PRESETS.values():
            if case.applies_to(preset):
                for mode in case.modes:
                    for elem in (2, 4):
                        alts = model.traffic(case.name, preset, mode, elem)
                        assert alts, (case.name, preset.name)
                        assert all(t.bytes > 0 and t.flops >= 0 for t in alts), (case.name, preset.name)


def test_unimixing_flops_formula():
    p = PRESETS["paper-small"]
    n, b, bs = 1024, 4, 2048
    assert p["N"] == n
    assert model.unimixing_flops(p) == 2 * bs * (n * n * b + n * b * b)
    fwd = model.traffic("unimixing", p, "fwd", 2)[0]
    both = model.traffic("unimixing", p, "fwd+bwd", 2)[0]
    assert both.flops == 3 * fwd.flops


def test_io_rule_counts_each_tensor_once():
    t = model.io_traffic("fwd", [10, 20], [True, False], [5], 7)
    assert (t.bytes, t.flops) == (35, 7)
    t = model.io_traffic("bwd", [10, 20], [True, False], [5], 7)
    assert (t.bytes, t.flops) == (5 + 30 + 10, 14)  # grad_out + inputs + grad of input 0
    t = model.io_traffic("fwd+bwd", [10, 20], [True, False], [5], 7)
    assert (t.bytes, t.flops) == (35 + 45, 21)
    with pytest.raises(ValueError, match="mode"):
        model.io_traffic("sideways", [1], [True], [1], 1)


def test_floor_is_max_of_bytes_and_flops_and_min_over_strategies():
    copy, mm = 1e12, 1e15
    mem, comp = model.Traffic(2e12, 0.0), model.Traffic(0.0, 3e15)
    assert mem.floor_s(copy, mm) == pytest.approx(2.0)
    assert model.Traffic(2e12, 3e15).floor_s(copy, mm) == pytest.approx(3.0)
    seconds, best = model.floor_of([mem, comp], copy, mm)
    assert seconds == pytest.approx(2.0) and best is mem


def test_sinkhorn_floor_counts_2k_passes():
    # each pass over one triangle of the symmetric logits (the paired tiled kernels read no more),
    # plus the logits read and P written once
    p = PRESETS["paper-100m"]  # N = 4096
    t = model.traffic("sinkhorn", p, "fwd", 2)[0]
    mat = 4096 * 4096 * 4
    tri = 4096 * 4097 // 2 * 4
    assert t.bytes == pytest.approx(2 * 20 * tri + 2 * mat)


def test_lite_global_floor_takes_the_cheaper_strategy():
    p = PRESETS["paper-100m"]
    alts = model.traffic("lite_weights", p, "fwd", 2)
    assert len(alts) == 2
    seconds, best = model.floor_of(alts, H200.copy_bytes_per_s, H200.matmul_flops_per_s)
    assert seconds == min(a.floor_s(H200.copy_bytes_per_s, H200.matmul_flops_per_s) for a in alts)


def test_presets_are_spec_table_10():
    spec = {
        "paper-small": (2048, 32, 128, 4, 1024),
        "lite-2.5m": (2048, 16, 96, 4, 384),
        "paper-100m": (2048, 32, 512, 4, 4096),
        "rankmixer-100m": (2048, 16, 768, 48, 256),
        "rankmixer-1b": (512, 32, 1536, 48, 1024),
    }
    for name, (bs, t, d, b, n) in spec.items():
        p = PRESETS[name]
        assert (p["bs"], p["T"], p["D"], p["B"], p["N"]) == (bs, t, d, b, n)
    assert (PRESETS["paper-small"]["r"], PRESETS["paper-small"]["h"]) == (128, 176)
    wk, dl = PRESETS["wukong"], PRESETS["dlrm-criteo"]
    assert (wk["bs"], wk["n"], wk["d"], wk["fm_k"]) == (4096, 64, 256, 32)
    assert (dl["bs"], dl["n"], dl["d"]) == (8192, 27, 128)
    assert PRESETS["paper-small"]["iters"] == 20 and PRESETS["paper-small"]["tau"] == 0.05
    assert PRESETS["paper-small"].with_bs(256)["bs"] == 256 and PRESETS["paper-small"]["bs"] == 2048
    with pytest.raises(KeyError, match="no size"):
        PRESETS["wukong"]["h"]


def test_plans_name_real_cases_that_apply():
    for plan in (GPU_PLAN, GPU_QUICK, CPU_PLAN, CPU_QUICK):
        for case, preset, modes in plan:
            assert CASES[case].applies_to(PRESETS[preset]), (case, preset)
            assert set(modes) <= set(CASES[case].modes)
    required = {("unimixing", "paper-small"), ("sinkhorn", "paper-small"), ("sinkhorn", "paper-100m"),
                ("lite_weights", "paper-100m"), ("unimixer-block", "paper-small"),
                ("unimixer-block-lite", "paper-100m"), ("rankmixer-block", "rankmixer-100m"),
                ("fm_interaction", "wukong"), ("pswiglu", "paper-small"), ("rms_norm", "paper-small")}
    assert required <= {(c, p) for c, p, _ in GPU_PLAN}
    assert all("infer" in m for c, p, m in GPU_PLAN if c.startswith("unimixer-block") and p == "paper-small")
    sel = plan_for("cpu", quick=False, cases=["unimixing"], presets=["cpu-tiny", "cpu-tiny-wukong"])
    assert [(c.name, p.name) for c, p, _ in sel] == [("unimixing", "cpu-tiny")]


def test_providers_come_from_the_registry():
    import unimixer_kernels as uk

    provs = providers_for(CASES["rms_norm"])
    assert provs[:3] == ["reference", "compiled", "compiled-cg"]
    for backend in uk.OPS["rms_norm"].impls:
        if backend != "reference":
            assert backend in provs and f"{backend}-cg" in provs


def test_a_block_times_its_mixed_spec_and_says_why_it_cannot(monkeypatch):
    # the UniMixer block's Sinkhorn on the cuda kernels, the rest on Triton: one more provider; where a
    # backend it names cannot run, its row says which and why
    provs = providers_for(CASES["unimixer-block"])
    assert "triton+sinkhorn=cuda/triton" in provs and "triton+sinkhorn=cuda/triton-cg" in provs
    assert not any("+" in p for p in providers_for(CASES["rankmixer-block"]))
    import unimixer_kernels as uk

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if uk.backend_status("cuda")[0]:
        pytest.skip("the cuda backend runs here")
    runner = CaseRunner(torch.device("cpu"), torch.float32, Ceilings(1e10, 1e11, "fake copy", "fake matmul"),
                        warmup_ms=0, rep_ms=1)
    rows = runner.run_case(CASES["unimixer-block"], PRESETS["cpu-tiny"].with_bs(4), ("fwd+bwd",),
                           ["triton+sinkhorn=cuda/triton"])
    assert [r["status"] for r in rows] == [f"unavailable: cuda: {uk.backend_status('cuda')[1]}"]


def test_a_block_is_timed_under_compile_cg_on_each_kernel_backend():
    # torch.compile(mode="reduce-overhead") of the block on its kernels: blocks only, and on a CPU a row
    # that says why it cannot run
    provs = providers_for(CASES["unimixer-block"])
    assert "triton-compiled-cg" in provs and "triton+sinkhorn=cuda/triton-compiled-cg" in provs
    assert not any(p.endswith("-compiled-cg") for p in providers_for(CASES["rms_norm"]))
    # the quick table leaves them out unless asked for by name
    assert not any(p.endswith("-compiled-cg") for p in providers_for(CASES["unimixer-block"], quick=True))
    assert providers_for(CASES["unimixer-block"], ["triton-compiled-cg", "compiled"], quick=True) == [
        "compiled", "triton-compiled-cg"]
    runner = CaseRunner(torch.device("cpu"), torch.float32, Ceilings(1e10, 1e11, "fake copy", "fake matmul"),
                        warmup_ms=0, rep_ms=1)
    rows = runner.run_case(CASES["rankmixer-block"], PRESETS["cpu-tiny-rankmixer"].with_bs(4), ("fwd+bwd",),
                           ["triton-compiled-cg"])
    assert [r["status"] for r in rows] == ["unavailable: CUDA graphs need a CUDA device"]


def _tiny_run(tmp_path):
    fake = Ceilings(1e10, 1e11, "fake copy", "fake matmul")
    runner = CaseRunner(torch.device("cpu"), torch.float32, fake, warmup_ms=0, rep_ms=1)
    preset = PRESETS["cpu-tiny"].with_bs(4)
    rows = runner.run_case(CASES["rms_norm"], preset, ("fwd", "fwd+bwd"),
                           ["reference", "compiled-cg", "triton-cg"])
    from bench.env import header

    head = header(torch.device("cpu"), fake, dtype="float32")
    return head, rows, write_results(tmp_path, "results", head, rows)


def test_results_files_carry_the_header(tmp_path):
    head, rows, (jpath, cpath) = _tiny_run(tmp_path)
    loaded_head, loaded_rows = load_results(jpath)
    for key in ("device", "torch", "triton", "cuda", "date_utc", "git_commit", "ceilings"):
        assert key in loaded_head, key
    assert loaded_head["ceilings"]["copy_bytes_per_s"] == 1e10
    ok = [r for r in loaded_rows if r["status"] == "ok"]
    assert {(r["mode"], r["provider"]) for r in ok} == {("fwd", "reference"), ("fwd+bwd", "reference")}
    for r in ok:
        assert r["ms"] > 0 and r["floor_ms"] > 0
        assert r["ratio_to_floor"] == pytest.approx(r["ms"] / r["floor_ms"])
    cg = [r for r in loaded_rows if r["provider"] == "compiled-cg"]
    assert cg and all(r["status"].startswith("unavailable: CUDA graphs") for r in cg)
    text = cpath.read_text()
    assert text.startswith("# device:") and "case,preset,bs,mode,provider,status,ms" in text
    assert json.loads(jpath.read_text())["rows"]


def test_table_and_compare():
    def row(provider, ms, mode="fwd+bwd", status="ok"):
        return dict(case="unimixing", preset="paper-small", bs=2048, mode=mode, provider=provider,
                    status=status, ms=ms, floor_ms=0.076, bound="compute")

    old = add_speedups([row("reference", 2.0), row("compiled", 1.0), row("compiled-cg", 0.8),
                        row("triton", 0.2)])
    assert old[3]["speedup_vs_best_compile"] == pytest.approx(4.0)
    table = markdown_table({"ceilings": {"copy_TBps": 4.14, "matmul_TFLOPs": 680}}, old)
    assert "| unimixing | paper-small | fwd+bwd |" in table and "4.00×" in table and "2.63× (triton)" in table
    new = [row("reference", 2.05), row("compiled", 1.0), row("compiled-cg", 0.8), row("triton", 0.3)]
    text, bad = compare(old, new, 1.1)
    assert bad == 1 and "regression" in text
    assert compare(old, old, 1.1)[1] == 0
    gone = [row("triton", None, status="error: boom")]
    assert compare(old, gone, 1.1)[1] == 1


def test_progress_bar(capsys):
    import io

    buf = io.StringIO()
    bar = Progress(4, width=8, stream=buf)
    bar.update("a")
    bar.update("b", advance=3)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[##......] 1/4") and lines[1].startswith("[########] 4/4")


def test_check_runs_every_available_backend_of_an_op():
    import unimixer_kernels as uk
    from bench.check import format_checks, run_checks

    results = run_checks(torch.device("cpu"), ops=["rms_norm"])
    backends = [b for b in uk.OPS["rms_norm"].impls if b != "reference"]
    assert sorted({r.backend for r in results}) == sorted(backends)
    for r in results:
        ok, why = uk.OPS["rms_norm"].status(r.backend)
        if ok and r.backend == "triton":  # the interpreter on this CPU (tests/conftest.py)
            assert r.status == "PASS", r.detail
        else:
            assert r.status == "skipped" and r.detail
    assert "passed" in format_checks(results)


def test_a_failed_check_shows_the_verdict_and_torchs_one_ulp_spread():
    from bench.check import _failure_detail

    message = ("output 0: max|kernel - fp64 ref| = 1.6e-06 > 2.0 * max|torch-float32 - fp64 ref| ...\n"
               "worst element (3,): kernel 0.5, fp64 0.49\n"
               "torch-float32 on every floating input moved by one ulp: 9.0e-07, 4.50x its own error "
               "(above 2.0 means the rule is beyond float32's reach at these inputs)")
    detail = _failure_detail(message)
    assert detail.startswith("output 0: max|kernel - fp64 ref|")
    assert "; torch-float32 on every floating input moved by one ulp: 9.0e-07, 4.50x" in detail
    assert "worst element" not in detail and "\n" not in detail
    assert _failure_detail("grad of input 1: off") == "grad of input 1: off"


def test_profile_lists_what_takes_the_time(tmp_path):
    from bench.__main__ import main

    out = tmp_path / "profile.md"
    assert main(["profile", "--case", "rms_norm", "--preset", "cpu-tiny", "--provider", "reference",
                 "--steps", "2", "--top", "3", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## rms_norm @ cpu-tiny, fwd+bwd") and "### reference: wall" in text
    assert text.count("\n| ") >= 2  # at least one row under the header
    # the case@preset form that ``run`` takes, without --preset, and each of several modes
    assert main(["profile", "--case", "rms_norm@cpu-tiny", "--mode", "fwd,fwd+bwd", "--provider", "reference",
                 "--steps", "2", "--top", "3", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## rms_norm @ cpu-tiny, fwd, " in text and "## rms_norm @ cpu-tiny, fwd+bwd, " in text
    with pytest.raises(SystemExit, match="--case: expected one of"):
        main(["profile", "--case", "no_such_case@cpu-tiny", "--device", "cpu"])


def test_train_comparison_writes_both_curves(tmp_path):
    from bench.__main__ import main

    assert main(["train", "--out", str(tmp_path), "--family", "rankmixer", "--steps", "3",
                 "--backends", "reference,reference", "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "train_compare.json").read_text())
    assert {"device", "torch", "date_utc", "git_commit"} <= set(result["header"])
    fam = result["families"]["rankmixer"]
    assert len(fam["runs"]["reference"]["losses"]) == 3
    assert fam["max_abs_gap"] == {"steps 1-3": 0.0}  # same backend, same seed: identical
    if importlib.util.find_spec("matplotlib") is not None:  # the plot needs the bench extra
        assert (tmp_path / "train_compare.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="two backends"):
        main(["train", "--out", str(tmp_path), "--backends", "reference"])


def test_memory_peak_breakdown_replays_the_allocator_trace():
    from bench.memory import peak_breakdown

    def frames(path, line):
        return [{"filename": "/x/torch/site.py", "line": 1, "name": "empty"},
                {"filename": f"/repo/{path}", "line": line, "name": "fn"}]

    events = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": frames("triton_kernels/pswiglu.py", 10)},
        {"action": "alloc", "addr": 2, "size": 50, "frames": frames("unimixer_kernels/nn/ffn.py", 5)},
        {"action": "free_requested", "addr": 1, "size": 100},  # only free_completed releases
        {"action": "alloc", "addr": 3, "size": 30, "frames": frames("triton_kernels/pswiglu.py", 10)},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 4, "size": 60, "frames": []},  # 140 live: below the peak of 180
        {"action": "free_completed", "addr": 99, "size": 7},  # allocated before the recording
    ]
    highs = {}
    peak, rows = peak_breakdown(events, highs)
    assert peak == 180
    assert rows == [("triton_kernels/pswiglu.py:10 (fn)", 130, 2),
                    ("unimixer_kernels/nn/ffn.py:5 (fn)", 50, 1)]
    assert {k: v[0] for k, v in highs.items()} == {
        "triton_kernels/pswiglu.py:10 (fn)": 180, "unimixer_kernels/nn/ffn.py:5 (fn)": 150,
        "(no frame of this repository: torch internals)": 140}
    # the blocks alive at a runner-up moment, grouped as the peak's
    assert highs["(no frame of this repository: torch internals)"][1] == [
        ("(no frame of this repository: torch internals)", 60, 1),
        ("unimixer_kernels/nn/ffn.py:5 (fn)", 50, 1), ("triton_kernels/pswiglu.py:10 (fn)", 30, 1)]


def test_memory_site_names_the_caller_of_the_output_helper():
    from bench.memory import _site

    frames = [{"filename": "/x/torch/site.py", "line": 1, "name": "empty"},
              {"filename": "/r/triton_kernels/_launch.py", "line": 130, "name": "new_output"},
              {"filename": "/r/triton_kernels/rms_norm.py", "line": 177, "name": "rms_norm_bwd_partials"}]
    assert _site(frames) == "triton_kernels/rms_norm.py:177 (rms_norm_bwd_partials)"


def test_memory_command_needs_cuda_and_says_so():
    from bench.__main__ import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        main(["memory", "--case", "rms_norm", "--preset", "paper-small", "--device", "cpu"])
    with pytest.raises(SystemExit, match="name the cases and their presets"):
        main(["memory", "--device", "cpu"])
    with pytest.raises(SystemExit, match="name the cases and their presets"):
        main(["memory", "--case", "rms_norm", "--device", "cpu"])
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        main(["memory", "--case", "rms_norm@paper-small", "--device", "cpu"])


def test_sanitize_variants_patch_the_modules_the_ops_use():
    # the forced paths must reach the kernel modules the ops call (unimixer_kernels.triton_kernels),
    # not a second copy imported as the top-level triton_kernels package
    import os

    from unimixer_kernels.triton_kernels import pswiglu, sinkhorn

    from bench.sanitize import _variants

    seen = {}
    for name in ("pswiglu", "sinkhorn"):
        for label, path in _variants(name):
            with path:
                seen[name + label] = (pswiglu.FUSED_MAX_D, sinkhorn.TILE_OVERRIDE, sinkhorn.RESIDENT,
                                      os.environ.get("UNIMIXER_FFN_BACKWARD"))
    assert seen["pswiglu [wide-token GEMM path]"][0] == 0
    assert seen["pswiglu [UNIMIXER_FFN_BACKWARD=recompute]"][3] == "recompute"
    assert seen["sinkhorn [tiled, 16x16 tiles, UNIMIXER_SINKHORN_PERSISTENT=0]"][1:3] == ((16, 16), False)
    assert seen["sinkhorn [tiled, resident, 16x16 tiles]"][1:3] == ((16, 16), True)
    assert pswiglu.FUSED_MAX_D != 0 and sinkhorn.TILE_OVERRIDE is None  # restored
    from bench.sanitize import SANITIZE_SIZES

    sized = [p for label, p in _variants("unimixing") if "D=96" in label]
    with sized[0]:
        assert SANITIZE_SIZES["D"] == 96 and os.environ["UNIMIXER_UNIMIXING_FORWARD"] == "gemm"
    assert SANITIZE_SIZES["D"] == 40


def test_stalls_summarises_ncu_source_page(tmp_path):
    # `python -m bench stalls`: per launch, the stall reasons' shares and the instructions with the
    # most samples, from `ncu --page source --csv` (a launch is a "Kernel Name" line, a header, rows)
    from bench.stalls import report

    cols = ["Address", "Source", "Warp Stall Sampling (All Samples)", "stall_barrier", "stall_long_sb",
            "stall_barrier (Not Issued)"]
    rows = [["Kernel Name", "k_fwd"], cols,
            ["0x10", "FADD R1, R2, -R3", "30", "0", "30", "0"],
            ["0x20", "LDS R4, [UR10]", "70", "70", "0", "70"],
            ["Kernel Name", "k_bwd"], cols,
            ["0x10", "FADD R1, R2, -R3", "1,000", "0", "1,000", "0"]]
    path = tmp_path / "ncu_source.csv"
    path.write_text("\n".join(",".join(f'"{c}"' for c in r) for r in rows) + "\n")
    text = report(str(path), top=1)
    assert "### k_fwd: 2 instructions, 100 samples" in text
    assert "### k_bwd: 1 instructions, 1000 samples" in text
    assert "stall reasons: barrier 70.0%, long_sb 30.0%" in text
    assert "| 70.0 | 0x20 | `LDS R4, [UR10]` | barrier 70 |" in text
    assert "FADD" not in text.split("### k_bwd")[0]  # top=1: only the LDS for k_fwd
    assert "first loop" not in text  # no backward branch
    # a loop (0x20-0x30, its branch back): the samples before, inside and after it
    loop = [["Kernel Name", "k_loop"], cols,
            ["0x10", "LDG R1, [R2]", "10", "0", "10", "0"],
            ["0x20", "HMMA R4, R6, R8", "60", "60", "0", "60"],
            ["0x30", "@P0 BRA 0x20", "20", "20", "0", "20"],
            ["0x40", "@P1 BRA 0x60", "0", "0", "0", "0"],
            ["0x50", "STG [R2], R1", "10", "0", "10", "0"]]
    path.write_text("\n".join(",".join(f'"{c}"' for c in r) for r in loop) + "\n")
    assert "samples before / inside / after its first loop (0x20-0x30): 10% / 80% / 10%" in report(str(path))
    path.write_text('"Kernel Name","k"\n"Address","Source"\n')
    with pytest.raises(ValueError, match="no launch with a 'Warp Stall Sampling"):
        report(str(path))


def test_check_runs_every_floating_input_in_its_dtype():
    # the main job's 16-bit check casts the cases' fp32 parameters too (as the tests do): with fp32
    # weights beside bf16 activations, SPEC §8's torch baseline upcasts to fp32 and the documented
    # mixed precision of some ops fails it by design
    from bench.check import _in_dtype

    x = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    idx = torch.arange(3)
    out = _in_dtype([x, w, idx, 0.5], torch.bfloat16)
    assert out[0] is x and out[2] is idx and out[3] == 0.5
    assert out[1].dtype == torch.bfloat16 and out[1].requires_grad and out[1].is_leaf


def test_the_sweep_plot_styles_every_provider_it_is_given():
    # a per-op backend spec gets a colour of its own, dashed under CUDA graphs; none is dropped
    from bench.plot import STYLE, _styles

    given = {"reference", "triton-cg", "triton+sinkhorn=cuda/triton", "triton+sinkhorn=cuda/triton-cg"}
    styles = _styles(given)
    assert set(styles) == given and styles["triton-cg"] == STYLE["triton-cg"]
    mixed, mixed_cg = styles["triton+sinkhorn=cuda/triton"], styles["triton+sinkhorn=cuda/triton-cg"]
    assert mixed["color"] == mixed_cg["color"] not in {s["color"] for s in STYLE.values()}
    assert mixed_cg["linestyle"] == "--" and "linestyle" not in mixed


def test_profile_timeline_splits_the_span_by_stream():
    # `python -m bench profile --timeline`: one step's kernels in start order; the span split into the
    # main stream running, only side streams running (exposed side work) and no kernel (gaps)
    from bench.profiling import timeline

    us = 1000
    kernels = [
        (0 * us, 10 * us, 7, "norm"),          # main
        (2 * us, 40 * us, 9, "sinkhorn"),      # side, overlaps the norm, then exposed 10..40
        (41 * us, 51 * us, 7, "mixing"),       # main after a 1 us gap with no kernel
        (45 * us, 48 * us, 11, "small"),       # a second side stream, under the main one
        (53 * us, 73 * us, 7, "ffn"),          # main after a 2 us gap
    ]
    out = timeline(kernels[::-1])  # any order in: sorted by start
    assert "span 73.0 us; main stream running 40.0, only side streams 30.0, no kernel 3.0" in out
    assert "5 kernels on 3 streams" in out and "main busy 40.0 us, side 1 busy 38.0 us" in out
    rows = [r for r in out.splitlines() if r.startswith("| ") and "kernel |" not in r]
    assert [r.split("|")[5].strip() for r in rows] == ["norm", "sinkhorn", "mixing", "small", "ffn"]
    assert rows[2].split("|")[3].strip() == "31.0"  # the main stream's gap before the mixing
    assert rows[3].split("|")[4].strip() == "side 2"
    assert timeline([]).strip() == "no device kernels in the step"


def test_tuning_probe_times_another_tree_only_on_its_own_kernels(tmp_path, capsys):
    """``--tree``: a folder that is no checkout is refused at once; a tree whose children would import
    the kernels from elsewhere (here a ``unimixer_kernels/triton_kernels`` package inside the package,
    as an install's mapping would give) is refused with the fix, before any GPU is looked for; a tree
    whose children import its own ``triton_kernels/`` passes the check."""
    from bench import tuning_probe

    with pytest.raises(SystemExit) as exit_info:
        tuning_probe.main(["--tree", str(tmp_path)])
    assert exit_info.value.code == 2 and "not a checkout of this project" in capsys.readouterr().err
    for tree, mapped in (("elsewhere", False), ("own", True)):
        root = tmp_path / tree
        (root / "bench").mkdir(parents=True)
        (root / "bench" / "tuning_probe.py").write_text("")
        (root / "triton_kernels").mkdir()
        (root / "triton_kernels" / "__init__.py").write_text("")
        (root / "unimixer_kernels" / "triton_kernels").mkdir(parents=True)
        (root / "unimixer_kernels" / "triton_kernels" / "__init__.py").write_text("")
        init = "import sys; sys.modules[__name__ + '.triton_kernels'] = __import__('triton_kernels')\n"
        (root / "unimixer_kernels" / "__init__.py").write_text(init if mapped else "")
        if mapped:
            tuning_probe._check_tree(str(root))
        else:
            with pytest.raises(SystemExit, match="uninstall unimixer-kernels"):
                tuning_probe._check_tree(str(root))


@pytest.mark.parametrize("module, argv", [("switch_ab", ["UNIMIXER_FFN_BACKWARD=buffers"]),
                                          ("switch_ab", ["=a,b"]),
                                          ("tuning_probe", ["--switch", "UNIMIXER_FFN_BACKWARD"])])
def test_switch_probes_name_a_malformed_switch(module, argv, capsys):
    """The in-process and fresh-process probes refuse a switch without two values (or a name) before
    they look for a GPU, and say what they expected."""
    probe = importlib.import_module(f"bench.{module}")
    with pytest.raises(SystemExit) as exit_info:
        probe.main(argv)
    assert exit_info.value.code == 2
    assert "expected NAME=value1,value2" in capsys.readouterr().err
