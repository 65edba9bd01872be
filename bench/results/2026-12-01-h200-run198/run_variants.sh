#!/bin/bash
# Each variant of csrc/sinkhorn_paired.cu (710358a's, with variant_<v>.diff applied) built in a copy of the
# source tree, all in parallel; then each timed by time_paired.py in its own process, three rounds in
# alternation (the first also checks P and dX against the Triton backend). Run from the repo root at
# 710358a on a GPU: OUT=<dir> bash bench/results/2026-12-01-h200-run198/run_variants.sh
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VARS="base A AB C ABC D E"
unset UNIMIXER_SKIP_CUDA_BUILD
for v in $VARS; do
  mkdir -p /tmp/v/$v && cp -r csrc unimixer_kernels triton_kernels bench setup.py pyproject.toml /tmp/v/$v/
  if [ $v != base ]; then patch -s -p1 -d /tmp/v/$v < "$HERE/variant_$v.diff"; fi
  (cd /tmp/v/$v && MAX_JOBS=2 python setup.py build_ext --inplace > $OUT/build_$v.log 2>&1; echo "$v built rc=$?" >> $OUT/built.txt) &
done
wait
cat $OUT/built.txt
for r in 0 1 2; do
  for v in $VARS; do
    (cd /tmp/v/$v && PYTHONPATH=/tmp/v/$v python "$HERE/time_paired.py" $v $([ $r = 0 ] && echo 1 || echo 0)) 2>&1 | tee -a $OUT/times.txt
  done
done
