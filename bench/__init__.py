"""The benchmark harness: one harness for every op and block (run from the repo root).

``python -m bench``               correctness of every op x backend, then the quick benchmark table
``python -m bench run --out DIR``  the full case list (GPU presets on a GPU), JSON + CSV results
``python -m bench table|plot|compare|floors``   read results / print the floor model
``python -m bench profile|memory``  where a case's device time / peak memory goes (GPU)

A *case* is ``(name, preset, mode)``. A per-case setup factory makes fresh random inputs and the
implementations; the providers (``reference``, ``compiled``, ``compiled-cg``, one per kernel backend
registered on the op, and ``<backend>-cg``) are derived from them. Every row carries the floor of an
explicit bytes/FLOPs model (:mod:`bench.model`) against ceilings measured in the same run.
"""
