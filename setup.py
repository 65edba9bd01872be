"""Build: the Python packages, and the CUDA extension ``unimixer_kernels._C`` when it can be built.

``triton_kernels/`` is installed as ``unimixer_kernels.triton_kernels`` so it never shadows
Triton's own top-level ``triton_kernels`` package.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["unimixer_kernels", "unimixer_kernels.*"])
packages.append("unimixer_kernels.triton_kernels")

setup(
    packages=packages,
    package_dir={"unimixer_kernels.triton_kernels": "triton_kernels"},
)
