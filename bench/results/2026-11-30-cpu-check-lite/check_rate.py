"""How often the main job's check of ``lite_weights`` (``bench/check.py``: fresh unseeded inputs at
its tiny shapes, fp32, SPEC §8's rule) fails, in the CPU interpreter: N checks in one process, each
failure printed with its verdict.

    PYTHONPATH=$PWD python check_rate.py N   (from the repository root)
"""

import collections
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from bench.check import run_checks  # noqa: E402


def main(n: int) -> None:
    fails = collections.Counter()
    for i in range(n):
        r = run_checks(torch.device("cpu"), ops=["lite_weights"])[0]
        if r.status != "PASS":
            fails[r.detail.split(":")[0]] += 1
            print(i, r.status, r.detail[:300], flush=True)
    print("draws", n, "failures", sum(fails.values()), dict(fails))


if __name__ == "__main__":
    main(int(sys.argv[1]))
