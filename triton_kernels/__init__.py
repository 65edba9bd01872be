"""Triton kernels and their launchers, one file per op. No autograd, no modules.

Installed as ``unimixer_kernels.triton_kernels`` (not as a top-level ``triton_kernels``, which is
Triton's own package). Import a kernel module only when the Triton backend is used.
"""
