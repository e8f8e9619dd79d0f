"""Unicode tables for the JavaScript TokenMonster (`stentor/infer/web/tokenmonster.js`).

Browsers carry their own Unicode version, so the JavaScript port takes every Unicode fact it
needs from these tables, generated here from the very functions the Python reference uses:
`go_props`/`go_to_lower`/`go_to_upper` (Go's Unicode 13 view) for capcode, and Python's
`unicodedata` (Unicode 14) and `str.lower` for normalization. Both then agree on every input.

Encodings (all flat integer lists, so the JSON stays small and gzips well):
  runs      [length, value, length, value, ...] covering U+0000..U+10FFFF in order
  set       [gap, length, gap, length, ...]: ranges, each gap counted from the previous range's end
  mapping   [gap, count, step, delta, ...]: `count` code points `step` apart, each mapping to
            itself + `delta`; the gap is counted from the previous group's first code point
  nfd       [gap, first, second, ...]: one level of canonical decomposition per code point (the
            JavaScript recurses, as CPython does); the gap and `first` are counted from the previous
            entry's, `second` is 0 for a one-character decomposition
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterable
from functools import lru_cache

from .tokenmonster import go_props, go_to_lower, go_to_upper

__all__ = ["unicode_tables", "unicode_tables_json"]

LIMIT = 0x110000
SIGMA = 0x3A3
# Hangul syllables decompose by arithmetic (the JavaScript does the same), so they stay out of "nfd".
HANGUL = range(0xAC00, 0xD7A4)


def _runs(values: Iterable[int]) -> list[int]:
    out: list[int] = []
    for v in values:
        if out and out[-1] == v:
            out[-2] += 1
        else:
            out += [1, v]
    return out


def _set(members: Iterable[int]) -> list[int]:
    out: list[int] = []
    end = 0
    for cp in members:  # ascending
        if out and cp == end:
            out[-1] += 1
        else:
            out += [cp - end, 1]
        end = cp + 1
    return out


def _mapping(pairs: Iterable[tuple[int, int]]) -> list[int]:
    groups: list[list[int]] = []  # [first, count, step, delta]
    for cp, target in pairs:  # ascending cp
        delta = target - cp
        if groups:
            g = groups[-1]
            last = g[0] + (g[1] - 1) * g[2]
            if g[3] == delta and (g[1] == 1 or cp - last == g[2]):
                if g[1] == 1:
                    g[2] = cp - last
                g[1] += 1
                continue
        groups.append([cp, 1, 1, delta])
    out: list[int] = []
    prev = 0
    for first, count, step, delta in groups:
        out += [first - prev, count, step, delta]
        prev = first
    return out


def _changed(fn: Callable[[int], int], cps: Iterable[int]) -> list[tuple[int, int]]:
    return [(cp, t) for cp in cps if (t := fn(cp)) != cp]


def _sigma_context(cps: list[int]) -> tuple[list[int], list[int]]:
    """(case-ignorable, cased-and-not-case-ignorable) as CPython's final-sigma rule sees them.

    Python exposes neither property, so both are read off `str.lower` itself: before a final
    `Σ`, a case-ignorable character is skipped, and the first other one must be cased.
    Whether a case-ignorable character is cased never matters to the rule.
    """
    ignorable, cased = [], []
    for cp in cps:
        c = chr(cp)
        after_digit = ("1" + c + "\u03a3").lower()[-1] == "\u03c2"  # c itself decides: cased, not ignorable
        after_letter = ("a" + c + "\u03a3").lower()[-1] == "\u03c2"  # c ignorable, or cased
        if after_digit:
            cased.append(cp)
        elif after_letter:
            ignorable.append(cp)
    return ignorable, cased


@lru_cache(maxsize=1)
def unicode_tables() -> dict:
    """Every Unicode fact tokenmonster.js needs, as JSON-serialisable compact tables (see module doc)."""
    category = [unicodedata.category(chr(cp)) for cp in range(LIMIT)]
    assigned = [cp for cp in range(LIMIT) if category[cp] not in ("Cn", "Co", "Cs")]
    lower_full = []
    for cp in assigned:
        low = [ord(ch) for ch in chr(cp).lower()]
        if cp != SIGMA and low != [go_to_lower(cp)]:
            lower_full.append([cp, *low])
    nfd: list[int] = []
    prev_cp = prev_first = 0
    for cp in assigned:
        dec = unicodedata.decomposition(chr(cp))
        if dec and not dec.startswith("<") and cp not in HANGUL:  # "<...>": compatibility only
            first, second = ([int(part, 16) for part in dec.split()] + [0])[:2]  # never more than two
            nfd += [cp - prev_cp, first - prev_first, second]
            prev_cp, prev_first = cp, first
    ignorable, cased = _sigma_context(assigned)
    return {
        "unidata_version": unicodedata.unidata_version,
        "props": _runs(go_props(cp) for cp in range(LIMIT)),
        "go_lower": _mapping(_changed(go_to_lower, assigned)),
        "go_upper": _mapping(_changed(go_to_upper, assigned)),
        # Python's full lowercase where it is not Go's simple one (U+0130, Unicode 14 letters); Σ by context
        "lower_full": lower_full,
        "mn": _set(cp for cp in assigned if category[cp] == "Mn"),
        "ccc": _runs(unicodedata.combining(chr(cp)) for cp in range(LIMIT)),
        "nfd": nfd,
        "case_ignorable": _set(ignorable),
        "cased": _set(cased),
    }


def unicode_tables_json() -> str:
    """The tables as compact JSON text (what a web page fetches)."""
    return json.dumps(unicode_tables(), separators=(",", ":"))
