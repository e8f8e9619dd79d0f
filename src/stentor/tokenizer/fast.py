"""numba-compiled TokenMonster kernels: the very functions of tokenmonster.py, compiled.

Each kernel is re-bound to a globals dict in which its helpers (`_decode_rune`, `_longest`, ...)
are the compiled versions, so the source exists once and both backends give identical ids.
"""

from __future__ import annotations

import types
from typing import Any

from stentor.tokenizer import tokenmonster as tm

try:
    import numba
except ImportError:  # numba is optional; callers check `available()`
    numba = None

_BACKEND: tm.Backend | None = None


def available() -> bool:
    return numba is not None


def _compile(func: Any, helpers: dict[str, Any], inline: bool = False) -> Any:
    """njit `func` (cached on disk), resolving its helper names to compiled functions.

    Helpers are inlined at the numba IR level: a real call that passes arrays costs atomic
    reference-count updates, which made the kernels an order of magnitude slower.
    """
    env = dict(func.__globals__)
    env.update(helpers)
    clone = types.FunctionType(func.__code__, env, func.__name__, func.__defaults__, func.__closure__)
    clone.__qualname__ = func.__qualname__
    clone.__module__ = func.__module__
    return numba.njit(cache=True, nogil=True, inline="always" if inline else "never")(clone)


def backend() -> tm.Backend:
    """The compiled backend (built once per process); raises ImportError without numba."""
    global _BACKEND
    if numba is None:
        raise ImportError("numba is not installed; the pure-Python tokenizer is used instead")
    if _BACKEND is None:
        helpers: dict[str, Any] = {}
        for name in tm.KERNEL_HELPERS:
            helpers[name] = _compile(getattr(tm, name), helpers, inline=True)
        kernels = {
            "collect_wide": _compile(tm._collect_wide, helpers),
            "capcode1": _compile(tm._capcode1_kernel, helpers),
            "capcode2": _compile(tm._capcode2_kernel, helpers),
            "tokenize": _compile(tm._tokenize_kernel, helpers),
        }
        # The batch kernel calls the three per-text kernels (one real call per text, not per byte).
        callees = {"_capcode1_kernel": kernels["capcode1"], "_capcode2_kernel": kernels["capcode2"],
                   "_tokenize_kernel": kernels["tokenize"]}  # fmt: skip
        many = _compile(tm._encode_many_kernel, {**helpers, **callees})
        _BACKEND = tm.Backend(**kernels, uses_arrays=True, encode_many=many)
    return _BACKEND
