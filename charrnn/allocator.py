"""Keep freed memory in the process: glibc's malloc otherwise hands it back to the OS at nearly every step.

A training step allocates and frees the same large arrays every iteration (caches, gradients, scratch). With
glibc's defaults the heap top above 128 KiB is trimmed back to the OS when they are freed, and the next step
grows it again: the kernel then zeroes fresh pages on every step (about 190 brk calls a second and a quarter of
a 2-core machine's time in the kernel during a sweep of small models). Raising the trim and mmap thresholds
lets malloc reuse that memory; the process keeps its peak step memory resident instead.

Nothing in the engine calls it: the setting is the whole process's, so the entry point decides. ``charrnn-train``
and the jobs of its sweeps call it before training; a script or notebook that trains opts in the same way, by
calling :func:`keep_freed_memory` once.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest accepted value on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc malloc's trim threshold to 1 GiB and its mmap threshold to 32 MiB, for this whole process
    (the setting is process-wide and stays); return whether it took: False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
