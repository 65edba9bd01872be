"""Maps the checkout's top-level ``triton_kernels/`` to ``unimixer_kernels.triton_kernels``.

A wheel and a PEP 660 editable install map the folder through ``setup.py``'s ``package_dir``.
Two ways of running from a checkout do not: a legacy ``setup.py develop`` install (setuptools
without PEP 660 editable support) and a bare ``PYTHONPATH=<checkout>``. There the package
finds the folder beside itself and registers it under its installed name, so every way of
running sees the same module names.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "unimixer_kernels.triton_kernels"


def map_triton_kernels() -> None:
    if _NAME in sys.modules or importlib.util.find_spec(_NAME) is not None:
        return
    init = Path(__file__).resolve().parent.parent / "triton_kernels" / "__init__.py"
    if not init.is_file():
        return  # an install without the kernels: importing them raises ModuleNotFoundError
    spec = importlib.util.spec_from_file_location(_NAME, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
