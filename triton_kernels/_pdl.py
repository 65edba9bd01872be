"""Programmatic dependent launch (PDL, sm_90+): a kernel launched with it may start while the kernel
before it in the stream still runs, and waits for it inside (``griddepcontrol.wait``: that kernel has
finished and its writes are visible). A kernel lets the next one launch with
``griddepcontrol.launch_dependents``; the next one's programs then take SM room as this kernel's leave.

The ``UNIMIXER_PDL`` switch (``_launch.pdl_launch``) decides where it is used; :func:`pdl_options` gives
a launch's keyword arguments. :func:`pdl_prologue` orders the two steps one of two ways:

- wait, then release (the default): the next kernel launches only once this one has passed its wait, so
  nothing before it in the stream is still running while the next one starts, and the next one may read
  before its own wait whatever this kernel does not write (the tiled Sinkhorn's ``S0`` tile);
- release, then wait (``RELEASE_FIRST``): the next kernel may launch while the kernel before this one
  still runs. A chain of such kernels is safe only where each one's reads before its wait touch nothing
  that any kernel still in flight writes, and where the chain's first kernel waits first and its last
  waits first too, so that no kernel outside the chain ever overlaps more than its neighbour (the
  per-token FFN backward's token passes, ``pswiglu.ffn_bwd``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ._launch import pdl_launch


@triton.jit
def pdl_prologue(PDL: tl.constexpr, RELEASE_FIRST: tl.constexpr = False):
    """With ``PDL``: wait until the previous kernel in the stream has finished and its writes are
    visible, before this program reads anything that kernel may write or writes anything, and let the
    next kernel launch, after the wait or (``RELEASE_FIRST``) before it. Without ``PDL``, nothing
    (stream order already serialises the kernels)."""
    if PDL:
        if RELEASE_FIRST:
            gdc_launch_dependents()
            gdc_wait()
        else:
            gdc_wait()
            gdc_launch_dependents()


def pdl_options(device: torch.device) -> dict:
    """A PDL-capable kernel's launch keywords: its ``PDL`` constexpr and Triton's ``launch_pdl`` where
    ``UNIMIXER_PDL`` asks for it on ``device`` (:func:`._launch.pdl_launch`), else ``PDL=False``. A
    launch that releases before it waits adds ``RELEASE_FIRST=True`` where ``PDL`` is on."""
    return dict(PDL=True, launch_pdl=True) if pdl_launch(device) else dict(PDL=False)
