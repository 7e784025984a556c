"""Compiling numeric kernels with numba: on first call, never at import, cached on disk for later processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def jit(function: F) -> F:
    """`function` compiled to machine code when first called (nogil: other threads run meanwhile)."""
    # The cache sits beside the source (__pycache__), so a service's workers and later runs load it in milliseconds.
    return cast(F, numba.njit(cache=True, nogil=True)(function))
