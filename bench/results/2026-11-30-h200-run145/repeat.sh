#!/usr/bin/env bash
# The UniMixing op's training rows three times in a row on one machine, each from a cold
# torch.compile cache (its own TORCHINDUCTOR_CACHE_DIR) and a cold Triton cache, nothing else on the
# GPU, the GPU's clocks sampled (read-only nvidia-smi queries) throughout; then the profile of the
# compiled providers at rankmixer-100m. From the repository root, after the install stage:
#   OUT=/some/folder bash bench/results/2026-11-30-h200-run145/repeat.sh
set -u
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 250 \
    >"$OUT/clocks.csv" 2>&1 &
SMI=$!
for i in 1 2 3; do
    echo "# run $i $(date +%H:%M:%S)" >>"$OUT/clocks.csv"
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor$i TRITON_CACHE_DIR=/tmp/triton$i timeout 150 python -m bench run \
        --case unimixing@rankmixer-100m,unimixing@paper-small --mode fwd+bwd \
        --provider compiled,compiled-cg,triton-cg --out "$OUT" --name "rep$i" >"$OUT/rep$i.log" 2>&1
    echo "run $i rc=$?"
done
TORCHINDUCTOR_CACHE_DIR=/tmp/inductor3 TRITON_CACHE_DIR=/tmp/triton3 timeout 100 python -m bench profile \
    --case unimixing --preset rankmixer-100m --mode fwd+bwd --provider compiled,compiled-cg --top 15 \
    --out "$OUT/profile_compiled.md" >"$OUT/profile.log" 2>&1
echo "profile rc=$?"
kill "$SMI"
