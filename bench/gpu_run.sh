#!/usr/bin/env bash
# One GPU run, from the repo root:   OUT=/some/folder bash bench/gpu_run.sh
#
# Stages (each under `timeout`, so one cannot eat the others):
#   ab        before anything is installed: python -m bench.tuning_probe --tree "$AB_TREE" (another checkout,
#             e.g. `git archive BASE` unpacked), the all-Triton block's step from this tree and that one in
#             alternating fresh processes, AB_PROCESSES each (default 2): ab.md
#   install   pip install -e . --no-build-isolation --no-deps
#   info      nvidia-smi, versions, python -m unimixer_kernels.info
#   prepare   in parallel, since all of it is compile-bound (CPU) rather than timed:
#               pytest -m gpu; bench/sanitize.py under compute-sanitizer memcheck and racecheck
#               (SANITIZE=0 leaves them out; SANITIZE_ARGS=--autocast takes the 16-bit GEMM paths);
#               and WARM_JOBS benchmark processes that run every case once at minimal repetitions
#               so that torch.compile's and Triton's on-disk caches are filled (compiled kernels, not
#               Triton's autotuning choices, which the bench stage makes alone on the GPU)
#             BUILD_EXT=1 also compiles the CUDA extension there (install may skip it), then runs
#             the GPU tests whose backend spec names cuda (they skipped beside the build; junit_specs.xml)
#             and its tests, tests/ops/test_*_cuda.py and tests/build (-m gpu, T_EXT_TESTS seconds,
#             junit_ext.xml; EXT_TESTS=0 builds it without them)
#   bench     python -m bench run, alone on the GPU (the timed numbers), from warm caches
#   sweep     the full UniMixer block at bs 256..2048 (sweep.json / .csv) and its plot (.png); SWEEP_CASE,
#             SWEEP_PRESET, SWEEP_BS and SWEEP_PROVIDERS choose others
#   variant   the bench stage's cases again with kernel switches set, one run per entry of
#             VARIANTS="UNIMIXER_PDL=1|sinkhorn@paper-small;UNIMIXER_FFN_BACKWARD=recompute" (cases after
#             '|', default VARIANT_CASES, else BENCH_CASES; VARIANT_ARGS, default BENCH_ARGS): variant<i>.json
#   ncu       Nsight Compute sections for a few launches of one case's kernels (NCU_CASE, NCU_KERNELS;
#             NCU_SOURCE=1 adds the report and its per-instruction stall samples, ncu_source.csv)
#   profile   python -m bench profile of the UniMixer block's Triton path (profile.md; PROFILE_CASE,
#             PROFILE_PRESET, PROFILE_MODES and PROFILE_PROVIDERS choose others; PROFILE_ARGS=--timeline adds
#             one step's kernels in start order with their streams)
#   memory    python -m bench memory: the blocks alive at a training step's peak, by allocating site
#             (memory.md; MEMORY_CASES="case@preset[@SWITCH=value,...] ...", default the RankMixer and full
#             UniMixer blocks)
#   train     two-block rankers trained 200 steps with backend reference and triton from one seed
#             (train_compare.json / .png)
#   table     the markdown table of results.json (table.md), printed last
# Choose stages with STAGES="bench table" (default: all but variant, profile and memory); stage limits with
# T_<STAGE>=seconds; GPU_TESTS=none leaves the GPU tests out of prepare, WARM_JOBS=0 and WARM_SWEEP=0
# the cache warm-up;
# BENCH_CASES="sinkhorn@paper-100m,unimixing" narrows the warm-up and the bench stage to those cases
# (case@preset pairs or case names; the warm-up spreads the entries over its jobs); BENCH_ARGS adds
# arguments to both (e.g. --provider reference,compiled,compiled-cg). Without a .git folder,
# set BENCH_GIT_COMMIT=<sha> so the results files name their commit.
#
# CLOCKS=1 samples the GPU's SM and memory clocks, power draw and temperature every 50 ms (read-only
# nvidia-smi queries) from the bench stage through the profile stage into clocks.csv, with a
# '# stage NAME TIME' line where each stage starts.
#
# Everything lands in $OUT, flat: gpu_run.log (install, info, benchmark progress), tests.log
# (pytest -m gpu) and junit.xml (each test's outcome, also those a stage limit cut short: pytest's
# -q summary does not name them), sanitizer.log (memcheck and racecheck), the results files, the plots and
# table.md. Where that would be more than 8 files, the .json and .csv files are packed into
# results.tar.gz at the end.
set -u
OUT="${OUT:-/tmp/unimixer_gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_AUTOTUNING=1
PY="${PYTHON:-python}"
LOG="$OUT/gpu_run.log"
STAGES="${STAGES:-install info prepare bench sweep train table}"
T_PREPARE="${T_PREPARE:-200}"
WARM_JOBS="${WARM_JOBS:-6}"
T_INSTALL="${T_INSTALL:-60}"
T_BENCH="${T_BENCH:-180}"
T_SWEEP="${T_SWEEP:-90}"
SWEEP_BS="${SWEEP_BS:-256,512,1024,2048}"
SWEEP_CASE="${SWEEP_CASE:-unimixer-block}"
T_TRAIN="${T_TRAIN:-120}"
SWEEP_PRESET="${SWEEP_PRESET:-paper-small}"
# what the sweep times: the warm-up in prepare and the sweep stage run the same list
SWEEP_PROVIDERS="${SWEEP_PROVIDERS:-reference,compiled,compiled-cg,triton,triton-cg}"
SWEEP_ARGS=(--case "$SWEEP_CASE" --preset "$SWEEP_PRESET" --mode fwd+bwd --sweep-bs "$SWEEP_BS"
            --provider "$SWEEP_PROVIDERS")
START=$(date +%s)
: >"$LOG"

want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# budget LIMIT RESERVE: the seconds after which a benchmark stage starts no new case: LIMIT - RESERVE
# (the time a case may still take), but at least LIMIT / 2, so that a short limit still times cases
budget() { local b=$(( $1 - $2 )); [ "$b" -lt $(( $1 / 2 )) ] && b=$(( $1 / 2 )); echo "$b"; }

# stage NAME SECONDS CMD...: run under timeout, output appended to the log, one status line on stdout
stage() {
    local name=$1 secs=$2 t0 rc
    shift 2
    t0=$(date +%s)
    [ -n "${CLOCKS_PID:-}" ] && echo "# stage $name $(date +'%Y/%m/%d %H:%M:%S.%3N')" >>"$OUT/clocks.csv"
    printf '\n===== %s (limit %ss) : %s\n' "$name" "$secs" "$*" >>"$LOG"
    timeout -k 10 "$secs" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '===== %s: rc=%s in %ss%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" \
        "$([ "$rc" = 124 ] && echo ' (TIMED OUT)')" | tee -a "$LOG"
    return $rc
}

echo "gpu_run: OUT=$OUT stages: $STAGES"

if want ab; then
    # no install yet: each tree's children import their own kernels from PYTHONPATH (tuning_probe checks it)
    stage ab "${T_AB:-400}" env PYTHONPATH="$PWD" "$PY" -m bench.tuning_probe \
        --processes "${AB_PROCESSES:-2}" --tree "${AB_TREE:?the ab stage needs AB_TREE=<another checkout>}"
    sed -n '/^===== ab /,/^===== ab:/p' "$LOG" >"$OUT/ab.md"
fi
if want install; then
    stage install "$T_INSTALL" "$PY" -m pip install -e . --no-build-isolation --no-deps
fi
# whatever the stages, the log names the device, versions, date and commit it ran on (bench/env.py)
"$PY" -c "import json, torch; from bench.env import header
print('# env', json.dumps(header(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))))" \
    >>"$LOG" 2>&1

if want info; then
    stage nvidia-smi 20 nvidia-smi
    stage versions 60 "$PY" -c "import torch, triton, unimixer_kernels as uk; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'uk', uk.__version__); print(torch.cuda.get_device_name()); print({k: sorted(v.impls) for k, v in uk.OPS.items()})"
    stage info 60 "$PY" -m unimixer_kernels.info
fi

if want prepare; then
    # compile-bound work in parallel; none of it is timed. It compiles but keeps none of its Triton
    # autotuning: it times the configurations beside the tests and each other, and a choice cached from
    # there held for the timed stage (the UniMixer blocks at paper-small: 0.847 ms so, 0.789 autotuned
    # alone, run118 against run119); the bench stage autotunes alone and caches for the stages after it
    export TRITON_CACHE_AUTOTUNING=0
    t0=$(date +%s)
    SAN="$(command -v compute-sanitizer || true)"
    [ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
    # GPU_TESTS: test paths, most important first; GPU_TEST_ARGS: extra pytest arguments (split on
    # spaces); GPU_TEST_K: a -k expression (may contain spaces; it matches substrings of every keyword,
    # and under pytest 9.1 those include `pytestmark`, so e.g. `tma` selects every marked test)
    # SIGINT at the limit: pytest then stops and still prints its summary (skip reasons included)
    if [ "${GPU_TESTS:-tests}" != none ]; then
        timeout -s INT -k 30 "$(( T_PREPARE - 30 ))" "$PY" -m pytest -m gpu -q -r fEs -p no:cacheprovider \
            --junitxml "$OUT/junit.xml" ${GPU_TEST_ARGS:-} ${GPU_TEST_K:+-k "$GPU_TEST_K"} ${GPU_TESTS:-tests} >"$OUT/tests.log" 2>&1 &
    fi
    if [ -n "$SAN" ] && [ "${SANITIZE:-1}" = 1 ]; then
        ( timeout -k 10 "$T_PREPARE" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
              --error-exitcode 3 --print-limit 20 "$PY" bench/sanitize.py ${SANITIZE_ARGS:-} >/tmp/memcheck.log 2>&1
          echo "memcheck rc=$?" >>/tmp/memcheck.log ) &
        ( timeout -k 10 "$T_PREPARE" "$SAN" --tool racecheck --error-exitcode 3 --print-limit 20 \
              "$PY" bench/sanitize.py ${SANITIZE_ARGS:-} >/tmp/racecheck.log 2>&1
          echo "racecheck rc=$?" >>/tmp/racecheck.log ) &
    fi
    if [ "${BUILD_EXT:-0}" = 1 ]; then
        # the CUDA extension compiles beside the rest (install may have run with UNIMIXER_SKIP_CUDA_BUILD=1)
        ( timeout -k 10 "$T_PREPARE" env -u UNIMIXER_SKIP_CUDA_BUILD "$PY" setup.py build_ext --inplace >/tmp/ext.log 2>&1
          echo "build_ext rc=$?" >>/tmp/ext.log ) &
    fi
    if [ -n "${BENCH_CASES:-}" ]; then
        IFS=, read -r -a CASES <<<"$BENCH_CASES"
    else
        mapfile -t CASES < <("$PY" -m bench cases --names 2>/dev/null)
    fi
    for ((j = 0; j < WARM_JOBS; j++)); do
        group=""
        for ((i = j; i < ${#CASES[@]}; i += WARM_JOBS)); do group="$group${group:+,}${CASES[$i]}"; done
        [ -z "$group" ] && continue
        TORCHINDUCTOR_COMPILE_THREADS=2 timeout -k 10 "$T_PREPARE" "$PY" -m bench run --out /tmp/warm$j \
            --name warm --case "$group" --warmup 1 --rep 1 --budget-s $(( T_PREPARE - 30 )) \
            ${BENCH_ARGS:-} >/tmp/warm$j.log 2>&1 &
    done
    if [ "${WARM_SWEEP:-1}" = 1 ]; then  # the sweep's batch sizes are shapes of their own: compile them here too
        TORCHINDUCTOR_COMPILE_THREADS=2 timeout -k 10 "$T_PREPARE" "$PY" -m bench run --out /tmp/warmsweep \
            --name warm "${SWEEP_ARGS[@]}" --warmup 1 --rep 1 >/tmp/warmsweep.log 2>&1 &
    fi
    wait
    export TRITON_CACHE_AUTOTUNING=1
    if [ "${SANITIZE:-1}" = 1 ]; then
        {
            echo "===== memcheck"; cat /tmp/memcheck.log 2>/dev/null
            echo "===== racecheck"; cat /tmp/racecheck.log 2>/dev/null
        } >"$OUT/sanitizer.log"
    fi
    for ((j = 0; j < WARM_JOBS; j++)); do
        printf '\n===== warm %s\n' "$j" >>"$LOG"; tail -n 5 /tmp/warm$j.log >>"$LOG" 2>/dev/null
    done
    if [ "${BUILD_EXT:-0}" = 1 ]; then
        { echo "===== build_ext"; tail -n 5 /tmp/ext.log; } >>"$OUT/tests.log"
    fi
    if [ "${BUILD_EXT:-0}" = 1 ] && [ "${GPU_TESTS:-tests}" != none ]; then
        # the GPU tests above ran beside the build, so those of a backend spec with `cuda` in it skipped
        # (not built yet): run those again now that it is (param ids carry the spec, e.g. cuda/triton)
        echo "===== pytest: the GPU tests' cuda/ specs, after the build" >>"$OUT/tests.log"
        UNIMIXER_REQUIRE_CUDA_EXT=1 timeout -k 5 "${T_EXT_TESTS:-400}" "$PY" -m pytest -m gpu -q -r fEs \
            -p no:cacheprovider --junitxml="$OUT/junit_specs.xml" ${GPU_TEST_ARGS:-} \
            -k "cuda/ ${GPU_TEST_K:+and ($GPU_TEST_K)}" ${GPU_TESTS:-tests} >>"$OUT/tests.log" 2>&1
    fi
    if [ "${BUILD_EXT:-0}" = 1 ] && [ "${EXT_TESTS:-1}" = 1 ]; then
        echo "===== pytest: CUDA extension" >>"$OUT/tests.log"
        UNIMIXER_REQUIRE_CUDA_EXT=1 timeout -k 5 "${T_EXT_TESTS:-400}" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
            --junitxml="$OUT/junit_ext.xml" tests/ops/test_*_cuda.py tests/build >>"$OUT/tests.log" 2>&1
    fi
    echo "===== prepare: done in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
    [ -f "$OUT/tests.log" ] && grep -E '^(FAILED|ERROR)|passed|failed|no tests ran' "$OUT/tests.log" | tail -n 25
    [ -f "$OUT/sanitizer.log" ] && grep -E ': (ok|ERROR)|ERROR SUMMARY|RACECHECK SUMMARY|rc=' "$OUT/sanitizer.log" \
        | sort | uniq -c | head -n 40
fi

CLOCKS_PID=""
if [ "${CLOCKS:-0}" = 1 ] && command -v nvidia-smi >/dev/null; then
    # the sampler and stage() both append (O_APPEND), so neither overwrites the other's lines
    : >"$OUT/clocks.csv"
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv \
        -lms 50 >>"$OUT/clocks.csv" 2>/dev/null &
    CLOCKS_PID=$!
fi

if want bench; then
    # no new case after T_BENCH-60 s (a case with a K=20 compile takes up to a minute); the results
    # file is rewritten after every case, so a timeout keeps everything measured before it
    stage bench "$T_BENCH" "$PY" -m bench run --out "$OUT" --name results --warmup 10 --rep 60 \
        --budget-s "$(budget "$T_BENCH" 60)" ${BENCH_CASES:+--case "$BENCH_CASES"} ${BENCH_ARGS:-}
fi

if want sweep; then
    stage sweep "$T_SWEEP" "$PY" -m bench run --out "$OUT" --name sweep "${SWEEP_ARGS[@]}" \
        --warmup 10 --rep 40 --budget-s $(( T_SWEEP - 40 ))
    [ -f "$OUT/sweep.json" ] && stage plot 60 "$PY" -m bench plot "$OUT/sweep.json" --mode fwd+bwd
fi

if want variant; then
    # the benchmark again with kernel switches set, timed beside the default rows of the bench stage:
    # VARIANTS="SWITCH=value ...[|cases];..." (cases default VARIANT_CASES, else BENCH_CASES; VARIANT
    # is a single entry), one variant<i>.json per entry; VARIANT_ARGS, default BENCH_ARGS
    IFS=';' read -r -a VLIST <<<"${VARIANTS:-${VARIANT:?set VARIANTS=\"SWITCH=value[|cases];...\"}}"
    i=0
    for entry in "${VLIST[@]}"; do
        i=$((i + 1))
        cases="${VARIANT_CASES:-${BENCH_CASES:-}}"
        case "$entry" in *"|"*) cases="${entry#*|}" ;; esac
        stage "variant$i" "${T_VARIANT:-120}" env ${entry%%|*} "$PY" -m bench run --out "$OUT" \
            --name "variant$i" --case "$cases" --warmup 10 --rep 60 \
            --budget-s "$(budget "${T_VARIANT:-120}" 30)" ${VARIANT_ARGS:-${BENCH_ARGS:-}}
    done
fi

if want ncu; then
    # Nsight Compute on a few launches of one case's Triton kernels (NCU_CASE, NCU_KERNELS regex,
    # NCU_SKIP launches skipped first, NCU_COUNT profiled): duration, occupancy, stall reasons
    NCU="$(command -v ncu || true)"
    [ -z "$NCU" ] && [ -x /usr/local/cuda/bin/ncu ] && NCU=/usr/local/cuda/bin/ncu
    if [ -n "$NCU" ]; then
        pair="${NCU_CASE:-sinkhorn@paper-small}"
        stage ncu "${T_NCU:-120}" env ${NCU_ENV:-} "$NCU" --clock-control none --target-processes all \
            --log-file "$OUT/ncu.txt" \
            -k "regex:${NCU_KERNELS:-sinkhorn_tile}" --launch-skip "${NCU_SKIP:-20}" --launch-count "${NCU_COUNT:-4}" \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
            --section SchedulerStats --section MemoryWorkloadAnalysis \
            ${NCU_SOURCE:+--section SourceCounters --import-source yes -o "$OUT/ncu"} \
            "$PY" -m bench run --out /tmp/ncu_bench --name ncu --case "${pair%@*}" --preset "${pair#*@}" \
            --provider triton --mode "${NCU_MODE:-fwd}" --warmup 0 --rep 1
        # NCU_SOURCE=1: the report too (ncu.ncu-rep), and its per-instruction page (SASS with each
        # instruction's stall samples) as ncu_source.csv
        [ -n "${NCU_SOURCE:-}" ] && [ -f "$OUT/ncu.ncu-rep" ] && stage ncu_source 60 bash -c \
            "'$NCU' --import '$OUT/ncu.ncu-rep' --page source --csv --print-source sass > '$OUT/ncu_source.csv'"
    else
        echo "ncu: not found" | tee -a "$LOG"
    fi
fi

if want profile; then
    # kernels by device time per step: where the block's time goes
    stage profile "${T_PROFILE:-90}" "$PY" -m bench profile --case "${PROFILE_CASE:-unimixer-block}" \
        --preset "${PROFILE_PRESET:-paper-small}" --mode "${PROFILE_MODES:-fwd+bwd,infer}" \
        --provider "${PROFILE_PROVIDERS:-triton}" --top 25 ${PROFILE_ARGS:-} \
        --out "$OUT/profile.md"
fi

if [ -n "$CLOCKS_PID" ]; then
    kill "$CLOCKS_PID" 2>/dev/null
    wait "$CLOCKS_PID" 2>/dev/null
    CLOCKS_PID=""
fi

if want memory; then
    : >"$OUT/memory.md"
    # entries case@preset, or case@preset@SWITCH=value[,SWITCH=value] to record with kernel switches set
    for entry in ${MEMORY_CASES:-rankmixer-block@rankmixer-100m unimixer-block@paper-small}; do
        IFS=@ read -r mcase mpreset menv <<<"$entry"
        [ -n "$menv" ] && echo "with ${menv//,/ }:" >>"$OUT/memory.md"
        stage "memory-$entry" "${T_MEMORY:-90}" env ${menv//,/ } "$PY" -m bench memory --case "$mcase" \
            --preset "$mpreset" --out "/tmp/memory_$entry.md"
        cat "/tmp/memory_$entry.md" >>"$OUT/memory.md" 2>/dev/null && echo >>"$OUT/memory.md"
    done
fi

if want train; then
    stage train "$T_TRAIN" "$PY" -m bench train --out "$OUT" --steps 200
fi

if want table; then
    if [ -f "$OUT/results.json" ]; then
        "$PY" -m bench table "$OUT/results.json" >"$OUT/table.md" 2>>"$LOG"
    fi
    if [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
        ( cd "$OUT" && tar czf results.tar.gz --remove-files -- *.json *.csv )
    fi
    echo
    echo "gpu_run: done in $(( $(date +%s) - START ))s; files in $OUT:"
    ls -1 "$OUT"
    echo
    [ -f "$OUT/table.md" ] && cat "$OUT/table.md"
fi
