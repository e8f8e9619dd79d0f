"""Native TokenMonster: vocabulary files, YAML building, encoding and decoding.

Byte-exact with the official Go implementation (upstream commit ea8fd60). This module imports
only the standard library and numpy, because it is copied verbatim into saved Hugging Face
tokenizer directories and loaded with trust_remote_code where stentor is not installed.

The hot loops (capcode and the branching tokenizer) are written once, as plain functions over
indexable int sequences, so that they run as-is in Python and can be compiled unchanged by
numba (see `Vocab.set_backend`).
"""

from __future__ import annotations

import bisect
import os
import re
import struct
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Backend",
    "StreamDecoder",
    "TokenInfo",
    "Vocab",
    "VocabError",
    "build_vocab_from_yaml",
    "load_vocab",
    "parse_vocab_yaml",
]

NONE24 = 0xFFFFFF
MAX_TOKEN_LEN = 40
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_ID = 16777213
HEADER_LEN = 24
MIN_RECORD_LEN = 1 + 1 + 2 + 9 + 4  # length byte, >= 1 token byte, flags+nWords, 3 u24, f32

# --- Go unicode semantics -------------------------------------------------------------------

P_LETTER, P_UPPER, P_LOWER, P_NUMBER, P_MARK, P_SPACE, P_APOS = 1, 2, 4, 8, 16, 32, 64
_GO_WHITE_SPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    + list(range(0x2000, 0x200B))
)
_CATEGORY_PROPS = {"Lu": P_LETTER | P_UPPER, "Ll": P_LETTER | P_LOWER, "Lt": P_LETTER, "Lm": P_LETTER,
                   "Lo": P_LETTER, "Nd": P_NUMBER, "Nl": P_NUMBER, "No": P_NUMBER,
                   "Mn": P_MARK, "Mc": P_MARK, "Me": P_MARK}
_APOSTROPHES = (0x27, 0x2019)


# Code points Python 3.11 (Unicode 14) assigns but Go 1.19 (Unicode 13) does not: for Go they
# have no properties and no case mapping. Everywhere else Python's categories agree with Go's.
_UNICODE14_NEW = (
    (0x870, 0x887), (0x889, 0x88E), (0x898, 0x89F), (0x8B5, 0x8B5), (0x8C8, 0x8D2), (0xC3C, 0xC3C),
    (0xC5D, 0xC5D), (0xCDD, 0xCDD), (0x170D, 0x170D), (0x1715, 0x1715), (0x171F, 0x171F), (0x180F, 0x180F),
    (0x1AC1, 0x1ACE), (0x1B4C, 0x1B4C), (0x1DFA, 0x1DFA), (0x2C2F, 0x2C2F), (0x2C5F, 0x2C5F), (0x9FFD, 0x9FFF),
    (0xA7C0, 0xA7C1), (0xA7D0, 0xA7D1), (0xA7D3, 0xA7D3), (0xA7D5, 0xA7D9), (0xA7F2, 0xA7F4),
    (0x10570, 0x1057A), (0x1057C, 0x1058A), (0x1058C, 0x10592), (0x10594, 0x10595), (0x10597, 0x105A1),
    (0x105A3, 0x105B1), (0x105B3, 0x105B9), (0x105BB, 0x105BC), (0x10780, 0x10785), (0x10787, 0x107B0),
    (0x107B2, 0x107BA), (0x10F70, 0x10F85), (0x11070, 0x11075), (0x110C2, 0x110C2), (0x11740, 0x11746),
    (0x11AB0, 0x11ABF), (0x12F90, 0x12FF0), (0x16A70, 0x16ABE), (0x16AC0, 0x16AC9), (0x1AFF0, 0x1AFF3),
    (0x1AFF5, 0x1AFFB), (0x1AFFD, 0x1AFFE), (0x1B11F, 0x1B122), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46),
    (0x1DF00, 0x1DF1E), (0x1E290, 0x1E2AE), (0x1E7E0, 0x1E7E6), (0x1E7E8, 0x1E7EB), (0x1E7ED, 0x1E7EE),
    (0x1E7F0, 0x1E7FE), (0x2A6DE, 0x2A6DF), (0x2B735, 0x2B738),
)
_UNICODE14_STARTS = [a for a, _ in _UNICODE14_NEW]


def _unknown_to_go(cp: int) -> bool:
    k = bisect.bisect_right(_UNICODE14_STARTS, cp) - 1
    return (k >= 0 and cp <= _UNICODE14_NEW[k][1]) or 0xD800 <= cp < 0xE000


def go_props(cp: int) -> int:
    """Go `unicode` predicates of one code point as P_* bits (surrogates and post-13 characters: none)."""
    if cp >= 0x870 and _unknown_to_go(cp):
        return 0
    p = _CATEGORY_PROPS.get(unicodedata.category(chr(cp)), 0)
    if cp in _GO_WHITE_SPACE:
        p |= P_SPACE
    if cp in _APOSTROPHES:
        p |= P_APOS
    return p


def go_to_lower(cp: int) -> int:
    """Go unicode.ToLower: simple one-to-one mapping (Python's full mapping differs only on U+0130)."""
    if cp >= 0x870 and _unknown_to_go(cp):
        return cp
    low = chr(cp).lower()
    return ord(low) if len(low) == 1 else (0x69 if cp == 0x130 else cp)


def go_to_upper(cp: int) -> int:
    """Go unicode.ToUpper: Python's result when it is one character, else the single titlecase form."""
    if cp >= 0x870 and _unknown_to_go(cp):
        return cp
    up = chr(cp).upper()
    if len(up) == 1:
        return ord(up)
    title = chr(cp).title()
    return ord(title) if len(title) == 1 else cp


_ASCII_PROPS = np.array([go_props(c) for c in range(128)], dtype=np.int64)
_ASCII_LOWER = np.array([go_to_lower(c) for c in range(128)], dtype=np.int64)


# --- kernels shared by the Python and the numba backends ---------------------------------------
# Written over indexable int sequences with only these helpers, so that `fast.py` can compile
# the very same functions. Runes follow Go's utf8.DecodeRune: an invalid byte is one rune (-1).

def _decode_rune(buf: Any, i: int, n: int) -> tuple[int, int]:
    """(code point, width) at buf[i]; (-1, 1) for an invalid byte, like Go's RuneError of width 1."""
    c = buf[i]
    if c < 0x80:
        return c, 1
    if 0xC2 <= c <= 0xDF:
        if i + 1 < n and 0x80 <= buf[i + 1] <= 0xBF:
            return ((c & 0x1F) << 6) | (buf[i + 1] & 0x3F), 2
        return -1, 1
    if 0xE0 <= c <= 0xEF:
        lo = 0xA0 if c == 0xE0 else 0x80
        hi = 0x9F if c == 0xED else 0xBF
        if i + 2 < n and lo <= buf[i + 1] <= hi and 0x80 <= buf[i + 2] <= 0xBF:
            return ((c & 0x0F) << 12) | ((buf[i + 1] & 0x3F) << 6) | (buf[i + 2] & 0x3F), 3
        return -1, 1
    if 0xF0 <= c <= 0xF4:
        lo = 0x90 if c == 0xF0 else 0x80
        hi = 0x8F if c == 0xF4 else 0xBF
        if i + 3 < n and lo <= buf[i + 1] <= hi and 0x80 <= buf[i + 2] <= 0xBF and 0x80 <= buf[i + 3] <= 0xBF:
            return (((c & 0x07) << 18) | ((buf[i + 1] & 0x3F) << 12) | ((buf[i + 2] & 0x3F) << 6)
                    | (buf[i + 3] & 0x3F)), 4
        return -1, 1
    return -1, 1


def _put_rune(out: Any, o: int, cp: int) -> int:
    """UTF-8 encode `cp` at out[o]; returns the new end."""
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


def _collect_wide(buf: Any, n: int, out: Any) -> int:
    """Write every valid non-ASCII code point of buf to `out` (for building the small props table)."""
    m = 0
    i = 0
    while i < n:
        if buf[i] < 0x80:
            i += 1
            continue
        cp, w = _decode_rune(buf, i, n)
        if cp >= 0:
            out[m] = cp
            m += 1
        i += w
    return m


def _rune_props(cp: int, aprops: Any, ucps: Any, uprops: Any) -> int:
    if cp < 0:
        return 0
    if cp < 128:
        return aprops[cp]
    lo = 0
    hi = len(ucps) - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if ucps[mid] < cp:
            lo = mid + 1
        else:
            hi = mid
    return uprops[lo]


def _rune_lower(cp: int, alows: Any, ucps: Any, ulows: Any) -> int:
    if cp < 0:
        return cp
    if cp < 128:
        return alows[cp]
    lo = 0
    hi = len(ucps) - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if ucps[mid] < cp:
            lo = mid + 1
        else:
            hi = mid
    return ulows[lo]


def _capcode1_kernel(buf: Any, n: int, aprops: Any, ucps: Any, uprops: Any, out: Any) -> int:
    """Capcode level 1: a 0x7F+space delete marker before words/numbers glued to preceding text."""
    o = 0
    prev = -1
    prevp = 0
    prev2p = 0
    i = 0
    while i < n:
        r = buf[i] + 0  # "+ 0" widens numba's uint8 so the rune can hold -1 and wide code points
        w = 1
        if r < 128:
            p = aprops[r]
        else:
            r, w = _decode_rune(buf, i, n)
            p = _rune_props(r, aprops, ucps, uprops)
        if p & 1:
            if not (prev == 32 or (prevp & 17) != 0 or ((prevp & 64) != 0 and (prev2p & 1) != 0)):
                out[o] = 0x7F
                out[o + 1] = 32
                o += 2
        elif p & 8:
            if not (prev == 32 or (prevp & 8) != 0):
                out[o] = 0x7F
                out[o + 1] = 32
                o += 2
        if r == 0x7F:
            out[o] = 0x14
            o += 1
        else:
            for q in range(w):
                out[o] = buf[i + q]
                o += 1
        i += w
        prev2p = prevp
        prevp = p
        prev = r
    return o


def _insert_case_markers(out: Any, isll: Any, start: int, end: int) -> int:
    """Put `DC ` before every lowercase rune in out[start:end] (turning a preceding `D ` into
    `DC `), in place from the back; returns the new end."""
    extra = 0
    for q in range(start, end):
        if isll[q] == 1:
            extra += 1 if q - 2 >= start and out[q - 2] == 68 and out[q - 1] == 32 else 3
    src = end - 1
    dst = end - 1 + extra
    while src >= start:
        flag = isll[src]
        out[dst] = out[src]
        isll[dst] = flag
        dst -= 1
        if flag == 1:
            glued = src - 2 >= start and out[src - 2] == 68 and out[src - 1] == 32
            out[dst] = 32
            out[dst - 1] = 67
            isll[dst] = 0
            isll[dst - 1] = 0
            dst -= 2
            if glued:
                src -= 2
                continue
            out[dst] = 68
            isll[dst] = 0
            dst -= 1
        src -= 1
    return end + extra


def _capcode2_kernel(buf: Any, n: int, aprops: Any, alows: Any, ucps: Any, uprops: Any, ulows: Any,
                     out: Any, isll: Any) -> int:
    """Capcode level 2: lowercase everything, marking case with C/W and glued words with D.

    `isll[o]` is 1 where a lowercase rune starts in `out`; when a multi-letter uppercase run
    turns out to be followed by lowercase, those runes get their `DC ` markers inserted.
    """
    o = 0
    prev = -1
    prevp = 0
    prev2p = 0
    in_run = False
    wpos = 0
    first_end = 0
    multi = False
    i = 0
    while i < n:
        r = buf[i] + 0  # "+ 0" widens numba's uint8 so the rune can hold -1 and wide code points
        w = 1
        if r < 128:
            p = aprops[r]
        else:
            r, w = _decode_rune(buf, i, n)
            p = _rune_props(r, aprops, ucps, uprops)
        mark = 0
        lowered = False
        if not in_run:
            if p & 4:
                if not (prev == 32 or (prevp & 20) != 0 or ((prevp & 64) != 0 and (prev2p & 1) != 0)):
                    mark = 1
            elif p & 2:
                if prev == 32:
                    out[o - 1] = 87
                    wpos = o - 1
                    out[o] = 32
                    isll[o] = 0
                    o += 1
                else:
                    mark = 2
                    wpos = o + 1
                lowered = True
                in_run = True
                multi = False
            elif (p & 8) != 0 and not (prev == 32 or (prevp & 8) != 0):
                mark = 1
        elif p & 2:
            if (prevp & 81) == 0:
                mark = 1
            multi = True
            lowered = True
        elif p & 4:
            in_run = False
            out[wpos] = 67
            if multi:
                o = _insert_case_markers(out, isll, first_end, o)
            if (prevp & 81) == 0:
                mark = 1
        elif p & 8:
            if (prevp & 8) == 0:
                mark = 1
        elif (p & 80) == 0:
            in_run = False
        if mark == 2:
            out[o] = 68
            out[o + 1] = 87
            out[o + 2] = 32
            isll[o] = 0
            isll[o + 1] = 0
            isll[o + 2] = 0
            o += 3
        elif mark == 1:
            out[o] = 68
            out[o + 1] = 32
            isll[o] = 0
            isll[o + 1] = 0
            o += 2
        start = o
        if lowered:
            low = _rune_lower(r, alows, ucps, ulows)
            o = _put_rune(out, o, low)
            ll = 1 if (_rune_props(low, aprops, ucps, uprops) & 4) != 0 else 0
        else:
            for q in range(w):
                out[o] = buf[i + q]
                o += 1
            ll = 1 if (p & 4) != 0 else 0
        isll[start] = ll
        for q in range(start + 1, o):
            isll[q] = 0
        if lowered and mark != 1 and not multi:
            first_end = o
        i += w
        prev2p = prevp
        prevp = p
        prev = r
    return o


def _longest(text: Any, start: int, end: int, node: int, etab: Any, emask: int) -> int:
    """Longest record along the trie path from `node` over text[start:end]; -1 if none.

    `etab` is an open-addressing hash of trie edges, two int64 per slot: the key
    node*256+byte (-1 = empty) and child | (record+1) << 24, so one probe is one cache line.
    """
    best = -1
    for q in range(start, end):
        c = text[q]
        key = node * 256 + c
        slot = (node * 2654435761 + c * 40503) & emask
        while True:
            k = etab[2 * slot]
            if k == key or k == -1:
                break
            slot = (slot + 1) & emask
        if k == -1:
            break
        v = etab[2 * slot + 1]
        node = v & 0xFFFFFF
        if v >> 24:
            best = (v >> 24) - 1
    return best


def _tokenize_kernel(text: Any, n: int, rlen: Any, rid: Any, rflags: Any, rnw: Any, ralt1: Any, ralt2: Any,
                     etab: Any, emask: int, begin: Any, maxlen: int, unk: int,
                     delid: int, space_node: int, o: int, out: Any, lp: Any, lpb: Any) -> int:
    """The "ungreedy" branching tokenizer (research note §5); returns the number of ids in `out`.

    `text` has one extra byte at index n (the look-ahead byte, 0). `lp`/`lpb` cache the
    longest-prefix lookups per position (-2 = not computed yet). Returns -1 if `out` fills up.
    """
    cap = len(out)
    count = 0
    i = 0
    cur = -1
    clen = 0
    fd = 0
    while i < n:
        if count + 2 > cap:
            return -1
        if cur < 0:
            if lp[i] == -2:
                lp[i] = _longest(text, i, min(n, i + maxlen), 0, etab, emask)
            cur = lp[i]
            if cur < 0:
                if unk >= 0:
                    out[count] = unk
                    count += 1
                i += 1
                fd = 0
                continue
            clen = rlen[cur]
        j1 = i + clen
        if j1 >= n or ((rflags[cur] & 32) != 0 and begin[text[j1]] == 12):
            out[count] = rid[cur]
            count += 1
            i = j1
            fd = 0
            cur = -1
            continue
        best = -1000000000
        best_branch = -1
        best_a = 0
        best_next = -1
        best_nlen = 0
        for branch in range(6):
            base = branch % 3
            if base == 0:
                frec = cur
                a = clen
            elif base == 1:
                frec = ralt1[cur]
                if frec < 0:
                    continue
                a = rlen[frec] - fd
            else:
                frec = ralt2[cur]
                if frec < 0:
                    continue
                a = rlen[frec] - fd
            j = i + a
            if j >= n:
                continue
            if lp[j] == -2:
                lp[j] = _longest(text, j, min(n, j + maxlen), 0, etab, emask)
            s = lp[j]
            if s < 0:
                continue
            ff = rflags[frec]
            nwf = rnw[frec] - fd
            slen = rlen[s]
            sf = rflags[s]
            if branch < 3:
                k = j + slen
                nbk = begin[text[k]]
                score = (a + slen + (ff >> 7) + (sf >> 7) + max(0, nwf - 1) + max(0, rnw[s] - 1)
                         + ((sf >> 2) & 1) + ((nbk >> 2) & 1) + 100 * (nwf + rnw[s] + (nbk >> 3)))
                if (ff & 1) != 0 and (sf & 2) != 0:
                    score -= 103
                if (ff & 8) != 0 and (sf & 16) != 0:
                    score -= 100
                if (sf & 1) != 0 and (nbk & 1) != 0:
                    score -= 3
                total = a + slen
                nxt = s
                nlen = slen
            else:
                if delid < 0 or (sf & 2) == 0 or rnw[s] != 0 or begin[text[j + slen]] != 1:
                    continue
                if lpb[j] == -2:
                    lpb[j] = _longest(text, j, min(n, j + maxlen - o), space_node, etab, emask)
                s2 = lpb[j]
                if s2 < 0 or rlen[s2] <= slen + 1:
                    continue
                b = rlen[s2] - o
                k = j + b
                nbk = begin[text[k]]
                s2f = rflags[s2]
                score = (a + b + (ff >> 7) + (s2f >> 7) + max(0, nwf - 1) + max(0, rnw[s2] - 1)
                         + ((nbk >> 2) & 1) + 100 * (nwf + rnw[s2] + (nbk >> 3)) - 1)
                if (ff & 1) != 0:
                    score -= 103
                if (ff & 8) != 0 and (s2f & 16) != 0:
                    score -= 100
                if (s2f & 1) != 0 and (nbk & 1) != 0:
                    score -= 3
                total = a + b
                nxt = s2
                nlen = b
            if base != 0:
                if total < clen:
                    score -= 100
                elif total == clen:
                    score -= 10000
            if score > best:
                best = score
                best_branch = branch
                best_a = a
                best_next = nxt
                best_nlen = nlen
        if best_branch < 0:
            out[count] = rid[cur]
            count += 1
            i += clen
            fd = 0
            cur = -1
            continue
        base = best_branch % 3
        if base == 0:
            out[count] = rid[cur]
        elif base == 1:
            out[count] = rid[ralt1[cur]]
        else:
            out[count] = rid[ralt2[cur]]
        count += 1
        if best_branch >= 3:
            out[count] = delid
            count += 1
            fd = 1
        else:
            fd = 0
        i += best_a
        cur = best_next
        clen = best_nlen
    return count


def _encode_many_kernel(buf: Any, starts: Any, lengths: Any, level: int, aprops: Any, alows: Any, ucps: Any,
                        uprops: Any, ulows: Any, coded: Any, isll: Any, rlen: Any, rid: Any, rflags: Any, rnw: Any,
                        ralt1: Any, ralt2: Any, etab: Any, emask: int, begin: Any, maxlen: int, unk: int, delid: int,
                        space_node: int, o: int, out: Any, counts: Any, lp: Any, lpb: Any) -> int:
    """Capcode then tokenize each normalized text buf[starts[k]:starts[k] + lengths[k]] (each followed by a
    0 byte), as `Vocab.encode_prepared(capcode_encode(text))` would one at a time; the ids go to `out`
    one text after another, their counts to `counts`. Returns the total, or -(k + 1) if text k made no
    progress. One call for a batch of short texts (compiled only: numba arrays, views by slicing)."""
    total = 0
    for k in range(len(starts)):
        s = starts[k]
        n = lengths[k]
        counts[k] = 0
        if n == 0:
            continue
        if level == 0:
            text = buf[s : s + n + 1]
            m = n
        else:
            if level == 1:
                m = _capcode1_kernel(buf[s : s + n], n, aprops, ucps, uprops, coded)
            else:
                m = _capcode2_kernel(buf[s : s + n], n, aprops, alows, ucps, uprops, ulows, coded, isll)
            coded[m] = 0
            text = coded[: m + 1]
        if m == 0:
            continue
        for j in range(m + 1):
            lp[j] = -2
            lpb[j] = -2
        c = _tokenize_kernel(text, m, rlen, rid, rflags, rnw, ralt1, ralt2, etab, emask, begin, maxlen, unk, delid,
                             space_node, o, out[total : total + 2 * m + 8], lp, lpb)
        if c < 0:
            return -(k + 1)
        counts[k] = c
        total += c
    return total


AUTO_FAST_BYTES = 1 << 16  # text a Vocab encodes on the Python kernels before it attaches numba's (~0.5 s of it)


class Backend(NamedTuple):
    """The kernels in callable form; the default runs them as plain Python over lists. `encode_many`
    (`_encode_many_kernel`, compiled) tokenizes a batch of texts in one call; None: one text at a time."""

    collect_wide: Callable[..., int]
    capcode1: Callable[..., int]
    capcode2: Callable[..., int]
    tokenize: Callable[..., int]
    uses_arrays: bool
    encode_many: Callable[..., int] | None = None


PYTHON_BACKEND = Backend(_collect_wide, _capcode1_kernel, _capcode2_kernel, _tokenize_kernel, False)
KERNEL_HELPERS = ("_decode_rune", "_put_rune", "_rune_props", "_rune_lower", "_insert_case_markers", "_longest")


# --- errors and small helpers ---------------------------------------------------------------

class VocabError(ValueError):
    """A vocabulary file, YAML source or build request that cannot be used."""


def _u24(data: bytes | memoryview, off: int) -> int:
    return data[off] | (data[off + 1] << 8) | (data[off + 2] << 16)


def _p24(value: int) -> bytes:
    return (value & 0xFFFFFF).to_bytes(3, "little")


def _f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _bits_f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


_NORM_BITS = [(1, "NFD"), (2, "Lowercase"), (4, "Accents"), (8, "Quotemarks"), (16, "Collapse"),
              (32, "Trim"), (64, "LeadingSpace"), (128, "UnixLines")]
_NORM_NAMES = {"nfd": 1, "lowercase": 2, "case": 2, "accents": 4, "accent": 4, "quotemarks": 8,
               "quotemark": 8, "apostrophes": 8, "quotes": 8, "collapse": 16, "spaces": 16, "space": 16,
               "doublespace": 16, "doublespaces": 16, "trim": 32, "trimspace": 32, "trim-space": 32,
               "leadingspace": 64, "leading-space": 64, "addleadingspace": 64, "unixlines": 128,
               "unix-lines": 128, "newlines": 128, "lines": 128, "new-lines": 128, "none": 0}


def normalization_name(flags: int) -> str:
    """Readable form of the normalization flags, like upstream Normalization()."""
    names = [name for bit, name in _NORM_BITS if flags & bit]
    return " ".join(names) if names else "None"


def parse_normalization(spec: str) -> int:
    """Normalization flags from the YAML/CLI string form (space separated, case-insensitive)."""
    flags = 0
    for word in spec.lower().split():
        if word not in _NORM_NAMES:
            raise VocabError(f"unknown normalization {word!r}")
        flags |= _NORM_NAMES[word]
    return flags


# --- normalization --------------------------------------------------------------------------

def _nfd_bytes(data: bytes) -> bytes:
    """NFD of UTF-8 bytes, invalid bytes kept (as surrogate escapes, which NFD leaves alone).

    Pure-ASCII input and input already in NFD skip the conversion entirely. Normalizing only
    the non-ASCII runs was measured: equal on English, 15-30x slower on accented or CJK text.
    """
    if data.isascii():
        return data
    s = data.decode("utf-8", "surrogateescape")
    if unicodedata.is_normalized("NFD", s):
        return data
    return unicodedata.normalize("NFD", s).encode("utf-8", "surrogateescape")


_CURLY = {0x98: 0x27, 0x99: 0x27, 0x9C: 0x22, 0x9D: 0x22}


def _fused_cleanup(data: bytes, flags: int) -> bytes:
    """unixlines / quotemarks / collapse as upstream's in-place loop, quirk included (note §2)."""
    unix, quotes, collapse = flags & 128, flags & 8, flags & 16
    out = bytearray()
    n = len(data)
    for i in range(n):
        c = data[i]
        if unix and c == 0x0D and i + 1 < n and data[i + 1] == 0x0A:
            continue
        if collapse and c == 0x20 and i > 0 and data[i - 1] == 0x20:
            continue
        if (quotes and c in _CURLY and i >= 2 and data[i - 2] == 0xE2 and data[i - 1] == 0x80
                and i - len(out) != 1):
            del out[-2:]
            out.append(_CURLY[c])
            continue
        out.append(c)
    return bytes(out)


def _strip_marks(s: str) -> str:
    return "".join(ch for ch in s if unicodedata.category(ch) != "Mn")


_SURROGATES = re.compile("[\udc80-\udcff]")


def _decode_replacing(data: bytes) -> str:
    """UTF-8 to str with every invalid byte as U+FFFD, as x/text transformers (cases, runes) write it."""
    return _SURROGATES.sub("\ufffd", data.decode("utf-8", "surrogateescape"))


def normalize(data: bytes, flags: int) -> bytes:
    """Apply the vocabulary's normalization (note §2) to raw input bytes."""
    if flags == 0:
        return data
    if flags == 1:
        return _nfd_bytes(data)
    if flags & (8 | 16 | 128):
        data = _fused_cleanup(data, flags)
    trim, lead = flags & 32, flags & 64
    if trim and lead:
        end = len(data)
        while end > 0 and data[end - 1] <= 0x20:
            end -= 1
        if end <= 1 and (end == 0 or data[0] > 0x20):
            data = b""
        elif data[0] > 0x20:
            data = b" " + data[: end - 1]
        else:
            start = 0
            while data[start] <= 0x20:
                start += 1
            data = b" " + data[start:end]
    elif trim:
        start, end = 0, len(data)
        while start < end and data[start] <= 0x20:
            start += 1
        while end > start and data[end - 1] <= 0x20:
            end -= 1
        data = data[start:end]
    elif lead and data and data[0] != 0x20:
        data = b" " + data
    if flags & 4:
        s = _strip_marks(unicodedata.normalize("NFD", _decode_replacing(data)))
        if flags & 2:
            s = s.lower()
        return s.encode("utf-8", "surrogateescape")
    if flags & 2:
        s = _decode_replacing(data)
        if flags & 1:
            s = unicodedata.normalize("NFD", s)
        return s.lower().encode("utf-8", "surrogateescape")
    if flags & 1:
        return _nfd_bytes(data)
    return data


def _as_bytes(text: str | bytes) -> bytes:
    """The bytes of `text` (str as UTF-8; lone surrogates pass through, as Go's strings do)."""
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"expected str or bytes, not {type(text).__name__}")


def _wide_tables(buf: Any, n: int, backend: Backend) -> tuple[Any, Any, Any]:
    """Sorted distinct non-ASCII code points of the input with their Go props and lowercase."""
    wide = np.empty(n, dtype=np.int64) if backend.uses_arrays else [0] * n
    m = backend.collect_wide(buf, n, wide)
    ucps = sorted(set(np.asarray(wide[:m]).tolist()))
    lows = [go_to_lower(c) for c in ucps]
    ucps += sorted(set(lows) - set(ucps) - set(range(128)))
    ucps.sort()
    if not ucps:
        ucps = [0x110000]
    props = [go_props(c) if c < 0x110000 else 0 for c in ucps]
    lows = [go_to_lower(c) if c < 0x110000 else c for c in ucps]
    if backend.uses_arrays:
        return np.asarray(ucps, np.int64), np.asarray(props, np.int64), np.asarray(lows, np.int64)
    return ucps, props, lows


def capcode_encode(data: bytes, level: int, backend: Backend = PYTHON_BACKEND) -> bytes:
    """Capcode-encode normalized bytes at `level` (0, 1 or 2)."""
    if level == 0 or not data:
        return data
    n = len(data)
    if backend.uses_arrays:
        buf: Any = np.frombuffer(data, dtype=np.uint8)
        aprops, alows = _ASCII_PROPS, _ASCII_LOWER
    else:
        buf, aprops, alows = data, _ASCII_PROPS.tolist(), _ASCII_LOWER.tolist()
    ucps, uprops, ulows = _wide_tables(buf, n, backend)
    # per rune of w bytes: at most a 3-byte marker plus its lowercase form (<= w + 1 bytes)
    size = 3 * n + 8 if level == 1 else 5 * n + 8
    if backend.uses_arrays:
        out: Any = np.empty(size, dtype=np.uint8)
    else:
        out = bytearray(size)
    if level == 1:
        count = backend.capcode1(buf, n, aprops, ucps, uprops, out)
    else:
        isll = np.empty(size, dtype=np.uint8) if backend.uses_arrays else bytearray(size)
        count = backend.capcode2(buf, n, aprops, alows, ucps, uprops, ulows, out, isll)
    return bytes(out[:count])


# --- capcode decoding -----------------------------------------------------------------------

class _CapDecodeState:
    """The four capcode-2 decoder flags (or the level-1 "drop next byte" flag), kept across chunks."""

    __slots__ = ("char", "word", "delete", "ignore")

    def __init__(self) -> None:
        self.char = self.word = self.delete = self.ignore = False


_UPPER_CACHE: dict[str, str] = {}


def _upper_char(ch: str) -> str:
    up = _UPPER_CACHE.get(ch)
    if up is None:
        cp = ord(ch)
        up = chr(go_to_upper(cp))
        _UPPER_CACHE[ch] = up
    return up


def _decode_cap2(data: bytes, st: _CapDecodeState) -> bytes:
    if not data:
        return data
    s = data.decode("utf-8", "surrogateescape")
    if "C" not in s and "W" not in s and "D" not in s and not (st.char or st.word or st.delete):
        return data
    out: list[str] = []
    for ch in s:
        if ch == "C":
            st.char, st.word = True, False
            continue
        if ch == "W":
            st.word, st.char, st.ignore = True, False, True
            continue
        if ch == "D":
            st.delete = True
            continue
        if ch == " ":
            if st.delete:
                st.delete = False
            else:
                out.append(ch)
                if not st.ignore:
                    st.word = False
        elif st.delete:
            st.delete = False
        elif st.char:
            st.char = False
            out.append(_upper_char(ch))
        elif st.word:
            cp = ord(ch)
            p = go_props(cp)
            out.append(_upper_char(ch) if p & (P_UPPER | P_LOWER) else ch)
            if not p & (P_UPPER | P_LOWER | P_NUMBER | P_APOS | P_MARK):
                st.word = False
        else:
            out.append(ch)
        st.ignore = False
    return "".join(out).encode("utf-8", "surrogateescape")


def _decode_cap1(data: bytes, st: _CapDecodeState) -> bytes:
    if 0x7F not in data and not st.delete:
        return data
    out = bytearray()
    for c in data:
        if st.delete:
            st.delete = False
        elif c == 0x7F:
            st.delete = True
        else:
            out.append(c)
    return bytes(out)


def _incomplete_utf8_tail(data: bytes) -> int:
    """Length of a trailing valid-but-unfinished UTF-8 sequence (0 if the data ends cleanly)."""
    n = len(data)
    for back in range(1, min(3, n) + 1):
        lead = data[n - back]
        if 0x80 <= lead < 0xC0:
            continue
        need = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
        if need <= back:
            return 0
        if back >= 2:
            second = data[n - back + 1]
            lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(
                lead, (0x80, 0xBF))
            if not lo <= second <= hi:
                return 0
        return back
    return 0


class StreamDecoder:
    """Incremental decoder: never emits half a UTF-8 character; capcode state carries over.

    Upstream's streaming decoder miscounts the held-back bytes (and skips capcode for charset
    none); this one implements the intended behaviour, so the concatenation of all chunks plus
    `flush()` equals `Vocab.decode` of all ids for every split.
    """

    def __init__(self, vocab: Vocab) -> None:
        self._vocab = vocab
        self._held = b""
        self._state = _CapDecodeState()

    def decode(self, ids: Iterable[int]) -> bytes:
        raw = self._held + self._vocab._raw_join(ids)
        keep = _incomplete_utf8_tail(raw)
        self._held = raw[len(raw) - keep:] if keep else b""
        return self._vocab._capdecode(raw[: len(raw) - keep], self._state)

    def flush(self) -> bytes:
        raw, self._held = self._held, b""
        return self._vocab._capdecode(raw, self._state)


# --- vocabulary -----------------------------------------------------------------------------

class TokenInfo(NamedTuple):
    """One user-visible token, like upstream TokensDetailed: type 0 regular, 1 byte, 2 special, 3 UNK."""

    id: int
    token: bytes
    type: int
    score: float


class _Record(NamedTuple):
    token: bytes
    flags: int
    nwords: int
    alt1: int
    alt2: int
    id: int
    score_bits: int


class _Deleted(NamedTuple):
    token: bytes
    id: int
    score_bits: int


class Vocab:
    """A TokenMonster vocabulary: the file's contents plus the tables encode/decode need."""

    def __init__(self, *, capcode: int, charset: int, normalization: int, mode: int, reserve: int,
                 unk_id: int | None, vocab_size: int, id_table_size: int, delete_token_id: int | None,
                 records: list[_Record], begin_byte: bytes, deleted: list[_Deleted], name: str = "<vocab>",
                 header_pad: bytes = b"\0\0\0") -> None:
        self._capcode = capcode
        self._charset = charset
        self._normalization = normalization
        self._mode = mode
        self._reserve = reserve
        self._unk_id = unk_id
        self._vocab_size = vocab_size
        self._id_table_size = id_table_size
        self._delete_id = delete_token_id
        self._records = records
        self._begin = begin_byte
        self._deleted = deleted
        self._name = name
        self._pad = header_pad
        self._max_len = max((len(r.token) for r in records), default=0)
        self._table: dict[int, bytes] = {}
        for rec in records:
            self._table[rec.id] = rec.token
        self._tok_arrays: tuple[Any, ...] | None = None  # (the backend they were built for, the tables)
        self._backend = PYTHON_BACKEND
        self._auto_fast = True  # attach the numba kernels after AUTO_FAST_BYTES (see _count_python_bytes)
        self._python_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the vocabulary, not the compiled backend or derived tables (rebuilt on demand)."""
        state = self.__dict__.copy()
        del state["_backend"]  # the kernels are functions of this module: __setstate__ re-attaches them
        state["_tok_arrays"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._backend, self._auto_fast, self._python_bytes = PYTHON_BACKEND, True, 0  # a copy starts over on Python

    # -- loading and saving

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Read and validate a `.vocab` file."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > MAX_FILE_BYTES:
                raise VocabError(f"{p.name}: file is {size} bytes, more than the {MAX_FILE_BYTES} byte limit")
            data = p.read_bytes()
        except OSError as exc:
            raise VocabError(f"{p}: cannot read vocabulary: {exc.strerror or exc}") from None
        return cls.from_bytes(data, name=p.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> Vocab:
        """Parse a `.vocab` image, rejecting anything truncated, inconsistent or oversized."""
        size = len(data)

        def fail(msg: str) -> VocabError:
            return VocabError(f"{name}: {msg} (file is {size} bytes)")

        if size > MAX_FILE_BYTES:
            raise fail(f"more than the {MAX_FILE_BYTES} byte limit")
        if size < HEADER_LEN + 256 + 3:
            raise fail("too short for a vocabulary header")
        capcode, charset, norm, mode, reserve = data[0], data[1], data[2], data[3], data[4]
        if capcode > 2:
            raise fail(f"capcode level {capcode} is not 0, 1 or 2")
        if charset > 2:
            raise fail(f"charset {charset} is not 0, 1 or 2")
        unk, vsize, tsize, count, delid, maxlen = (_u24(data, 8), _u24(data, 11), _u24(data, 14),
                                                    _u24(data, 17), _u24(data, 20), data[23])
        if tsize > MAX_ID + 2:
            raise fail(f"id table size {tsize} exceeds {MAX_ID + 2}")
        if unk != NONE24 and unk >= tsize:
            raise fail(f"UNK id {unk} is outside the id table of size {tsize}")
        if count * MIN_RECORD_LEN > size - HEADER_LEN - 256 - 3:
            raise fail(f"header announces {count} token records, more than the file can hold")
        records: list[_Record] = []
        off = HEADER_LEN
        prev_tok = b""
        for r in range(count):
            length = data[off] if off < size else 0
            if off + 1 + length + 15 > size:
                raise fail(f"truncated token record {r} at byte {off}")
            if not 1 <= length <= MAX_TOKEN_LEN:
                raise fail(f"token record {r} at byte {off} has length {length}, not 1..{MAX_TOKEN_LEN}")
            tok = bytes(data[off + 1: off + 1 + length])
            off += 1 + length
            flags, nwords = data[off], data[off + 1]
            alt1, alt2, tid = _u24(data, off + 2), _u24(data, off + 5), _u24(data, off + 8)
            bits = struct.unpack_from("<I", data, off + 11)[0]
            off += 15
            if (len(tok), tok) < (len(prev_tok), prev_tok):
                raise fail(f"token record {r} is out of (length, bytes) order")
            prev_tok = tok
            if alt1 != NONE24 and alt1 >= r or alt2 != NONE24 and (alt2 >= r or alt1 == NONE24):
                raise fail(f"token record {r} has an invalid alternative index")
            if tid >= tsize:
                raise fail(f"token record {r} has id {tid} outside the id table of size {tsize}")
            records.append(_Record(tok, flags, nwords, alt1, alt2, tid, bits))
        if off + 256 + 3 > size:
            raise fail(f"truncated before the begin-byte table at byte {off}")
        begin = bytes(data[off: off + 256])
        off += 256
        ndel = _u24(data, off)
        off += 3
        if ndel * 8 > size - off:
            raise fail(f"announces {ndel} deleted tokens, more than the file can hold")
        deleted: list[_Deleted] = []
        for r in range(ndel):
            length = data[off] if off < size else 0
            if off + 1 + length + 7 > size:
                raise fail(f"truncated deleted-token record {r} at byte {off}")
            tok = bytes(data[off + 1: off + 1 + length])
            off += 1 + length
            deleted.append(_Deleted(tok, _u24(data, off), struct.unpack_from("<I", data, off + 3)[0]))
            off += 7
        if off != size:
            raise fail(f"{size - off} trailing bytes after byte {off}")
        if maxlen != max((len(r.token) for r in records), default=0):
            raise fail(f"header max token length {maxlen} does not match the records")
        if delid != NONE24 and (delid >= tsize or not any(r.id == delid and len(r.token) == 1 for r in records)):
            raise fail(f"delete-token id {delid} is not a single-byte token")
        return cls(capcode=capcode, charset=charset, normalization=norm, mode=mode, reserve=reserve,
                   unk_id=None if unk == NONE24 else unk, vocab_size=vsize, id_table_size=tsize,
                   delete_token_id=None if delid == NONE24 else delid, records=records, begin_byte=begin,
                   deleted=deleted, name=name, header_pad=bytes(data[5:8]))

    def to_bytes(self) -> bytes:
        """Serialize exactly as upstream Save (a loaded file comes back byte-identical)."""
        parts = [bytes([self._capcode, self._charset, self._normalization, self._mode, self._reserve]), self._pad,
                 _p24(NONE24 if self._unk_id is None else self._unk_id), _p24(self._vocab_size),
                 _p24(self._id_table_size), _p24(len(self._records)),
                 _p24(NONE24 if self._delete_id is None else self._delete_id), bytes([self._max_len])]
        for rec in self._records:
            parts.append(bytes([len(rec.token)]) + rec.token + bytes([rec.flags, rec.nwords]) + _p24(rec.alt1)
                         + _p24(rec.alt2) + _p24(rec.id) + struct.pack("<I", rec.score_bits))
        parts.append(self._begin)
        parts.append(_p24(len(self._deleted)))
        for d in self._deleted:
            parts.append(bytes([len(d.token)]) + d.token + _p24(d.id) + struct.pack("<I", d.score_bits))
        return b"".join(parts)

    def save(self, path: str | os.PathLike) -> None:
        """Write the `.vocab` file atomically (temp file in the same directory, then rename)."""
        target = Path(path)
        data = self.to_bytes()
        fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- properties

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        """What upstream Len() reports (can exceed the number of distinct ids, note §7)."""
        return self._vocab_size

    @property
    def id_table_size(self) -> int:
        return self._id_table_size

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def capcode(self) -> int:
        return self._capcode

    @property
    def charset(self) -> int:
        return self._charset

    @property
    def charset_name(self) -> str:
        return ("none", "utf-8", "utf-16")[self._charset]

    @property
    def normalization(self) -> int:
        return self._normalization

    @property
    def normalization_name(self) -> str:
        return normalization_name(self._normalization)

    @property
    def mode(self) -> int:
        return self._mode

    @property
    def reserve(self) -> int:
        return self._reserve

    @property
    def delete_token_id(self) -> int | None:
        return self._delete_id

    @property
    def max_token_length(self) -> int:
        return self._max_len

    @property
    def special_ids(self) -> list[int]:
        return sorted({r.id for r in self._records if r.flags == 64})

    def id_to_token(self, token_id: int) -> bytes | None:
        """Decode-table bytes of an id (the variant form where one exists); None for gaps and UNK."""
        return self._table.get(token_id)

    def tokens(self) -> list[TokenInfo]:
        """User-visible tokens like upstream TokensDetailed: records with score > -0.5, plus UNK."""
        out = []
        for rec in self._records:
            score = _bits_f32(rec.score_bits)
            if score > -0.5:
                kind = 2 if rec.flags == 64 else 1 if len(rec.token) == 1 else 0
                out.append(TokenInfo(rec.id, rec.token, kind, score))
        if self._unk_id is not None:
            out.append(TokenInfo(self._unk_id, b"", 3, 0.0))
        return out

    def __repr__(self) -> str:
        return (f"Vocab({self._name!r}, vocab_size={self._vocab_size}, capcode={self._capcode}, "
                f"charset={self.charset_name!r}, normalization={self.normalization_name!r})")

    # -- encoding

    def set_backend(self, backend: Backend | None) -> None:
        """Install compiled kernels (e.g. stentor.tokenizer.fast); None restores the Python ones (and keeps
        them: a backend set here is never switched automatically)."""
        self._backend = backend or PYTHON_BACKEND
        self._auto_fast = False

    def _count_python_bytes(self, n: int) -> None:
        """After AUTO_FAST_BYTES of text on the Python kernels, attach the numba ones when numba is there.

        A Vocab starts on Python (StentorTokenizer.from_pretrained, AutoTokenizer, Vocab.load): importing
        numba and loading its cached kernels costs ~1 s, more than a few short texts take, while a
        corpus runs ~25x faster on them. A copy of this module saved beside a model keeps its own kernels.
        """
        self._python_bytes += n
        if self._python_bytes < AUTO_FAST_BYTES:
            return
        self._auto_fast = False
        if __name__ != "stentor.tokenizer.tokenmonster":
            return
        from stentor.tokenizer import fast

        if fast.available():
            self._backend = fast.backend()

    @property
    def backend(self) -> Backend:
        return self._backend

    def _arrays(self, backend: Backend) -> tuple[Any, ...]:
        """Record tables and the flattened trie (open-addressing edge hash) for `backend`'s tokenizer kernel."""
        if self._tok_arrays is not None and self._tok_arrays[0] is backend:
            return self._tok_arrays[1]
        recs = self._records
        node_rec = [-1]
        edges: dict[int, int] = {}
        for idx, rec in enumerate(recs):
            node = 0
            for c in rec.token:
                key = node * 256 + c
                child = edges.get(key)
                if child is None:
                    child = len(node_rec)
                    node_rec.append(-1)
                    edges[key] = child
                node = child
            node_rec[node] = idx
        size = 1 << max(4, (2 * len(edges)).bit_length())
        mask = size - 1
        etab = [-1] * (2 * size)
        for key, child in edges.items():
            node, c = key >> 8, key & 255
            slot = (node * 2654435761 + c * 40503) & mask
            while etab[2 * slot] != -1:
                slot = (slot + 1) & mask
            etab[2 * slot] = key
            etab[2 * slot + 1] = child | ((node_rec[child] + 1) << 24)
        o = 2 if self._charset == 2 else 1
        space_node = edges.get(32, -1)
        if o == 2 and space_node >= 0:
            space_node = edges.get(space_node * 256, -1)

        def noalt(v: int) -> int:
            return -1 if v == NONE24 else v

        cols = ([len(r.token) for r in recs], [r.id for r in recs], [r.flags for r in recs],
                [r.nwords for r in recs], [noalt(r.alt1) for r in recs], [noalt(r.alt2) for r in recs], etab)
        begin = list(self._begin)
        if backend.uses_arrays:
            cols = tuple(np.asarray(c, dtype=np.int64) for c in cols)
            begin = np.frombuffer(self._begin, dtype=np.uint8).astype(np.int64)
        arrays = (*cols, mask, begin, space_node, o)
        self._tok_arrays = (backend, arrays)
        return arrays

    def encode_prepared(self, text: bytes) -> list[int]:
        """Tokenize bytes that are already normalized and capcoded (the vocabulary's encoded form)."""
        n = len(text)
        if n == 0 or self._max_len == 0:
            return []
        backend = self._backend  # read once: another thread may attach the numba kernels meanwhile
        rlen, rid, rflags, rnw, ralt1, ralt2, etab, mask, begin, space_node, o = self._arrays(backend)
        unk = -1 if self._unk_id is None else self._unk_id
        delid = -1 if self._delete_id is None or space_node < 0 else self._delete_id
        cap = 2 * n + 8
        if backend.uses_arrays:
            buf = np.frombuffer(text + b"\0", dtype=np.uint8)
            out = np.empty(cap, dtype=np.int32)  # ids and record indexes are below 2**24
            lp = np.full(n + 1, -2, dtype=np.int32)
            lpb = np.full(n + 1, -2, dtype=np.int32)
        else:
            buf = text + b"\0"
            out = [0] * cap
            lp = [-2] * (n + 1)
            lpb = [-2] * (n + 1)
        count = backend.tokenize(buf, n, rlen, rid, rflags, rnw, ralt1, ralt2, etab, mask,
                                 begin, self._max_len, unk, delid, space_node, o, out, lp, lpb)
        if count < 0:
            raise VocabError(f"{self._name}: tokenizer made no progress on a {n}-byte input")
        return out[:count].tolist() if backend.uses_arrays else out[:count]

    def prepare(self, text: str | bytes) -> bytes:
        """Normalize and capcode-encode input (str is UTF-8 encoded first; invalid UTF-8 passes through)."""
        data = _as_bytes(text)
        if self._auto_fast:
            self._count_python_bytes(len(data))
        return capcode_encode(normalize(data, self._normalization), self._capcode, self._backend)

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids for `text`: normalization, capcode, then the branching tokenizer."""
        return self.encode_prepared(self.prepare(text))

    def encode_many(self, texts: Sequence[str | bytes]) -> list[list[int]]:
        """`[self.encode(t) for t in texts]`, in one compiled call where the backend has one (a short text
        such as a BLiMP sentence spends most of `encode` in per-call Python: ~60 us, against a few here)."""
        backend = self._backend
        many = backend.encode_many
        if many is None or self._max_len == 0 or len(texts) < 2:
            return [self.encode(t) for t in texts]
        datas = [normalize(_as_bytes(t), self._normalization) for t in texts]
        lengths = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))
        starts = np.zeros(len(datas), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        buf = np.frombuffer(b"\0".join(datas) + b"\0", dtype=np.uint8)
        longest = int(lengths.max())
        grow = (1, 3, 5)[self._capcode]  # capcode writes at most grow * n + 8 bytes (capcode_encode's sizes)
        if self._capcode:
            ucps, uprops, ulows = _wide_tables(buf, len(buf), backend)  # every text's code points at once
        else:
            ucps = uprops = ulows = np.zeros(1, dtype=np.int64)
        size = grow * longest + 9
        coded = np.empty(size, dtype=np.uint8)
        isll = np.empty(size, dtype=np.uint8)
        rlen, rid, rflags, rnw, ralt1, ralt2, etab, mask, begin, space_node, o = self._arrays(backend)
        unk = -1 if self._unk_id is None else self._unk_id
        delid = -1 if self._delete_id is None or space_node < 0 else self._delete_id
        out = np.empty(2 * grow * int(lengths.sum()) + 24 * len(datas), dtype=np.int32)  # 2m + 8 ids per text at most
        counts = np.empty(len(datas), dtype=np.int64)
        lp = np.empty(size, dtype=np.int32)
        lpb = np.empty(size, dtype=np.int32)
        total = many(buf, starts, lengths, self._capcode, _ASCII_PROPS, _ASCII_LOWER, ucps, uprops, ulows, coded, isll,
                     rlen, rid, rflags, rnw, ralt1, ralt2, etab, mask, begin, self._max_len, unk, delid, space_node, o,
                     out, counts, lp, lpb)  # fmt: skip
        if total < 0:
            raise VocabError(f"{self._name}: tokenizer made no progress on a {lengths[-total - 1]}-byte input")
        ids = out[:total].tolist()
        bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
        return [ids[a:b] for a, b in zip(bounds, bounds[1:])]

    # -- decoding

    def _raw_join(self, ids: Iterable[int]) -> bytes:
        table = self._table
        return b"".join([table.get(int(i), b"") for i in ids])

    def _capdecode(self, raw: bytes, state: _CapDecodeState) -> bytes:
        if self._capcode == 2:
            return _decode_cap2(raw, state)
        if self._capcode == 1:
            return _decode_cap1(raw, state)
        return raw

    def decode(self, ids: Iterable[int]) -> bytes:
        """Bytes for token ids: table lookup then capcode decoding (UNK, gaps and unknown ids give nothing)."""
        return self._capdecode(self._raw_join(ids), _CapDecodeState())

    def decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    # -- YAML export

    def export_yaml(self) -> str:
        """YAML text like upstream ExportYAML (records with score > -0.5; specials in their own list)."""
        lines = [f"charset: {self.charset_name}",
                 f'normalization: "{normalization_name(self._normalization).lower()}"',
                 f"capcode: {self._capcode}"]
        if self._mode < 5:
            lines.append(f"training-param: {self._mode | (self._reserve << 3)}")
        if self._unk_id is not None:
            lines += ["unk: true", f"unk-id: {self._unk_id}"]
        regular, special = [], []
        for rec in self._records:
            score = _bits_f32(rec.score_bits)
            if score <= -0.5:
                continue
            item = [f'    - token:   "{_yaml_escape(rec.token)}"', f"      id:      {rec.id}"]
            if score > 0:
                item.append(f"      score:   {_format_f32(score)}")
            item.append("      encoded: true")
            (special if rec.flags == 64 else regular).extend(item)
        if regular:
            lines += ["tokens:", *regular]
        if special:
            lines += ["special:", *special]
        return "\n".join(lines) + "\n"


def _format_f32(value: float) -> str:
    """Shortest decimal that round-trips the float32, positional (Go 'f', -1, 32)."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


_YAML_ESCAPES = {0: "\\0", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 0x5C: "\\\\",
                 0x22: '\\"'}


def _yaml_escape(token: bytes) -> str:
    try:
        s = token.decode("utf-8")
    except UnicodeDecodeError:
        return "TokenMonsterHexEncode{" + token.hex() + "}"
    return "".join(_YAML_ESCAPES.get(ord(ch), ch) for ch in s)


def load_vocab(path: str | os.PathLike) -> Vocab:
    """Load a `.vocab` file (plain Python kernels; stentor.tokenizer.load_vocab adds numba)."""
    return Vocab.load(path)


# --- YAML -----------------------------------------------------------------------------------

_YAML_DQ_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
                    "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85",
                    "_": "\xa0", "L": "\u2028", "P": "\u2029"}
_YAML_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)$")
_YAML_PLAIN_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _yaml_scalar(text: str, where: str) -> tuple[Any, str]:
    """Parse one scalar at the start of `text`; returns (value, rest of the line after it)."""
    if text.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(text):
            ch = text[i]
            if ch == '"':
                return "".join(out), text[i + 1:]
            if ch == "\\":
                esc = text[i + 1: i + 2]
                if esc in _YAML_DQ_ESCAPES:
                    out.append(_YAML_DQ_ESCAPES[esc])
                    i += 2
                    continue
                width = {"x": 2, "u": 4, "U": 8}.get(esc)
                digits = text[i + 2: i + 2 + width] if width else ""
                if not width or len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise VocabError(f"{where}: bad escape in double-quoted string")
                cp = int(digits, 16)
                if cp > 0x10FFFF:
                    raise VocabError(f"{where}: escape beyond U+10FFFF")
                out.append(chr(cp))
                i += 2 + width
                continue
            out.append(ch)
            i += 1
        raise VocabError(f"{where}: unterminated double-quoted string")
    if text.startswith("'"):
        out = []
        i = 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1: i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), text[i + 1:]
            out.append(text[i])
            i += 1
        raise VocabError(f"{where}: unterminated single-quoted string")
    cut = re.search(r"\s#", text)
    raw = (text[: cut.start()] if cut else text).strip()
    low = raw.lower()
    if low in ("true", "yes", "on"):
        return True, ""
    if low in ("false", "no", "off"):
        return False, ""
    if low in ("", "~", "null"):
        return None, ""
    if _YAML_PLAIN_INT.match(raw):
        return int(raw), ""
    if _YAML_PLAIN_FLOAT.match(raw):
        return float(raw), ""
    return raw, ""


def _yaml_key_value(line: str, where: str) -> tuple[str, Any, bool]:
    """`key: value` -> (key, value, has_value)."""
    m = re.match(r"([A-Za-z0-9_-]+)\s*:(\s|$)", line)
    if not m:
        raise VocabError(f"{where}: expected 'key: value', got {line.strip()[:40]!r}")
    rest = line[m.end():].lstrip()
    if not rest or rest.startswith("#"):
        return m.group(1), None, False
    value, tail = _yaml_scalar(rest, where)
    if tail.strip() and not tail.strip().startswith("#"):
        raise VocabError(f"{where}: unexpected text after the value of {m.group(1)!r}")
    return m.group(1), value, True


def parse_vocab_yaml(text: str, name: str = "<yaml>") -> dict[str, Any]:
    """Parse the YAML subset vocabulary files use: top-level scalars and lists of flat mappings.

    A dedicated parser keeps this module free of third-party imports; it handles the quoting
    and escapes upstream's files use (double-quoted escapes, single quotes, comments).
    """
    result: dict[str, Any] = {}
    current_list: list[dict[str, Any]] | None = None
    item: dict[str, Any] | None = None
    item_indent = -1
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): 0x1C-0x1E, U+0085 are token bytes
        line = line.removesuffix("\r")
        where = f"{name}: line {lineno}"
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise VocabError(f"{where}: tabs are not allowed for indentation")
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            key, value, has_value = _yaml_key_value(line, where)
            if has_value:
                result[key] = value
                current_list = None
            else:
                current_list = []
                result[key] = current_list
            item = None
            continue
        if current_list is None:
            raise VocabError(f"{where}: indented line outside a list")
        body = line.lstrip(" ")
        if body.startswith("- ") or body == "-":
            item = {}
            current_list.append(item)
            item_indent = indent + 2 + (len(body[1:]) - len(body[1:].lstrip(" ")) - 1 if len(body) > 1 else 0)
            body = body[1:].lstrip(" ")
            if not body or body.startswith("#"):
                continue
        elif item is None or indent < item_indent:
            raise VocabError(f"{where}: mapping entry outside a list item")
        key, value, _ = _yaml_key_value(body, where)
        item[key] = value
    return result


# --- building a vocabulary from a token list (upstream NewVocabFromYAML) ------------------------

_EXTENDED_CHARS = "£€©®™°%¢¥—–•‘’“”áéíóúýàèìòùâêîôûäëïöüñãõçåæœ"
_HEX_TOKEN = re.compile(r"TokenMonsterHexEncode\{([0-9a-fA-F]*)\}$")


def _runes(tok: bytes) -> list[int]:
    """Code points as Go decodes them: an invalid byte is U+FFFD of width 1."""
    out = []
    i, n = 0, len(tok)
    while i < n:
        cp, w = _decode_rune(tok, i, n)
        out.append(0xFFFD if cp < 0 else cp)
        i += w
    return out


class _BuildClasses:
    """Character classes the builder uses (note §8.3), for one capcode level."""

    def __init__(self, capcode: int) -> None:
        self.capcode = capcode

    def letter(self, cp: int) -> bool:
        p = go_props(cp)
        if p & P_MARK:
            return True
        return bool(p & P_LETTER) and not (self.capcode == 2 and cp in (0x43, 0x57, 0x44))

    def number(self, cp: int) -> bool:
        return bool(go_props(cp) & P_NUMBER)

    def alnum(self, cp: int) -> bool:
        return self.letter(cp) or self.number(cp)

    def marker(self, cp: int) -> bool:
        return cp in (0x43, 0x57, 0x44) if self.capcode == 2 else cp == 0x7F if self.capcode == 1 else False

    @staticmethod
    def space(cp: int) -> bool:
        return cp in _GO_WHITE_SPACE


def _last_rune(tok: bytes) -> int:
    runes = _runes(tok)
    return runes[-1] if runes else 0xFFFD


def _record_properties(tok: bytes, cls: _BuildClasses, index_of: Mapping[bytes, int],
                       counts: list[list[int]]) -> tuple[int, int, int, int]:
    """(flags, nWords, alt1, alt2) of a regular record; updates the begin-byte counts."""
    runes = _runes(tok)
    r1 = runes[0]
    r2 = runes[1] if len(runes) > 1 else 0xFFFD
    flags = nwords = 0
    min_alt = 1
    if r1 == 0x20:
        flags |= 4
        counts[1][tok[0]] += 1
        if cls.alnum(r2):
            nwords += 1
            min_alt = 2
    elif cls.letter(r1):
        flags |= 2
        counts[0][tok[0]] += 1
    elif cls.marker(r1):
        if r1 in (0x43, 0x57):
            flags |= 4
        flags |= 16
        counts[2][tok[0]] += 1
    elif cls.number(r1):
        counts[3][tok[0]] += 1
    else:
        counts[2][tok[0]] += 1
    if len(tok) == 1:
        letters, digits, punct = False, False, True
    else:
        letters = (r1 == 0x20 or cls.letter(r1)) and cls.letter(r2)
        digits = (r1 == 0x20 or cls.number(r1)) and cls.number(r2)
        punct = not cls.alnum(r1) and not cls.alnum(r2)
        prev = r2
        for r in runes[2:]:
            if prev == 0x20 and cls.alnum(r):
                nwords += 1
            if cls.letter(r):
                punct = digits = False
            elif cls.number(r):
                punct = letters = False
            elif r != 0x20:
                letters = digits = False
            prev = r
    last = runes[-1]
    if min_alt == 2 and cls.letter(last) and letters and nwords == 1:
        flags |= 32
    if min_alt == 2 and nwords <= 1:
        min_alt = 1
    if cls.marker(last):
        flags |= 8
    if cls.letter(last):
        flags |= 1
    if letters or digits or punct:
        flags |= 128
    suffix_at = -1
    for suffix in (b"'s", "\u2019s".encode()):
        if tok.endswith(suffix) and len(tok) > len(suffix):
            if cls.letter(_last_rune(tok[: -len(suffix)])):
                suffix_at = len(tok) - len(suffix)
            break
    slots = [[NONE24, 0, 0], [NONE24, 0, 0]]  # index, length, priority
    for cut in range(len(tok) - 1, min_alt - 1, -1):
        idx = index_of.get(tok[:cut])
        if idx is None:
            continue
        prefix_last = _last_rune(tok[:cut])
        rest = _runes(tok[cut:])
        cont = rest[0]
        cont2 = rest[1] if len(rest) > 1 else 0xFFFD
        stop = False
        if cont == 0x20 and cls.alnum(cont2):
            priority = 10
        elif cls.capcode == 0 and (
                (not cls.letter(prefix_last) and prefix_last != 0x5F and (cls.letter(cont) or cont == 0x5F))
                or (not cls.number(prefix_last) and cls.number(cont))):
            priority = 9
        elif ((cls.letter(prefix_last) or prefix_last == 0x5F) and not (cls.letter(cont) or cont == 0x5F)) or (
                cls.number(prefix_last) and not cls.number(cont)):
            priority = 9
        elif cls.space(prefix_last) and not cls.space(cont):
            priority = 7
        elif not cls.space(prefix_last) and cls.space(cont):
            priority = 8
        elif cls.marker(cont):
            priority = 9
        elif cut == suffix_at:  # upstream tests this last, after the letter rule has usually matched
            priority, stop = 8, True
        else:
            priority = 1
        s1, s2 = slots
        target = s1 if (s1[2] < s2[2] or (s1[2] == s2[2] and s1[1] <= s2[1])) else s2
        if priority > target[2]:
            target[:] = [idx, cut, priority]
        if stop:
            break
    s1, s2 = slots
    if s2[0] != NONE24 and (s2[2] > s1[2] or (s2[2] == s1[2] and s2[1] > s1[1])):
        s1, s2 = s2, s1
    return flags, nwords, s1[0], s2[0]


def _begin_class(letter: int, space: int, other: int, number: int) -> int:
    if letter > max(space, other, number) and letter > 2:
        return 1
    if space > max(letter, other, number) and space > 2:
        return 12
    if other > max(letter, space, number) and other > 2:
        return 10
    return 0


def _yaml_bool(cfg: Mapping[str, Any], key: str) -> bool:
    value = cfg.get(key, False)
    if not isinstance(value, bool) and value is not None:
        raise VocabError(f"{key} must be true or false, not {value!r}")
    return bool(value)


def _yaml_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VocabError(f"{what} must be an integer, not {value!r}")
    return value


def build_vocab_from_yaml(source: str | bytes | os.PathLike | Mapping[str, Any]) -> Vocab:
    """Build a vocabulary like upstream NewVocabFromYAML (ids, flags, alternatives, variants, UNK).

    `source` is a parsed mapping, YAML text (str or bytes), or the path of a YAML file (a str
    naming an existing file is read as a path).
    """
    name = "<yaml>"
    if isinstance(source, Mapping):
        cfg = dict(source)
    else:
        if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                                and os.path.isfile(source)):
            name = Path(source).name
            try:
                source = Path(source).read_bytes()
            except OSError as exc:
                raise VocabError(f"{name}: cannot read: {exc.strerror or exc}") from None
        elif isinstance(source, str) and "\n" not in source and ":" not in source:
            raise VocabError(f"{source}: no such YAML file")
        if isinstance(source, bytes):
            try:
                source = source.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise VocabError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        cfg = parse_vocab_yaml(source, name)
    try:
        return _build(cfg)
    except VocabError as exc:
        raise VocabError(f"{name}: {exc}") from None


def _build(cfg: Mapping[str, Any]) -> Vocab:
    charset_name = str(cfg.get("charset") or "").lower()
    charset = 1 if charset_name in ("utf-8", "utf8") else 2 if charset_name in ("utf-16", "utf16") else 0
    norm = parse_normalization(str(cfg.get("normalization") or ""))
    capcode = _yaml_int(cfg.get("capcode", 0) or 0, "capcode")
    if not 0 <= capcode <= 2:
        raise VocabError(f"capcode must be 0, 1 or 2, not {capcode}")
    include = [_yaml_bool(cfg, k) for k in ("include-256-bytes", "include-128-bytes", "include-utf8-bytes",
                                            "include-ascii-bytes", "include-extended-bytes",
                                            "exclude-other-bytes")]
    if cfg.get("training-param") is not None:
        tparam = _yaml_int(cfg["training-param"], "training-param")
        mode = tparam & 7
    else:
        tparam, mode = 0, 5
    reserve = sum(1 << bit for bit, on in enumerate(include) if on) if any(include) else (tparam >> 3) & 0xFF
    reset = _yaml_bool(cfg, "reset-token-ids")
    use_unk = _yaml_bool(cfg, "unk")
    unk_pin = None if reset or cfg.get("unk-id") is None else _yaml_int(cfg["unk-id"], "unk-id")
    cls = _BuildClasses(capcode)

    def items(key: str) -> list[Mapping[str, Any]]:
        value = cfg.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise VocabError(f"{key} must be a list of mappings")
        return value

    def token_bytes(item: Mapping[str, Any]) -> bytes | None:
        raw = item.get("token")
        if raw is None:
            return None
        raw = str(raw)
        hexed = _HEX_TOKEN.match(raw)
        if hexed and len(hexed.group(1)) % 2 == 0:
            data = bytes.fromhex(hexed.group(1))
        else:
            data = raw.encode("utf-8", "surrogatepass")
        if not item.get("encoded", False):
            data = capcode_encode(normalize(data, norm), capcode)
        return data

    def pin_of(item: Mapping[str, Any], where: str) -> int | None:
        if reset or item.get("id") is None:
            return None
        pin = _yaml_int(item["id"], f"{where} id")
        if not 0 <= pin <= MAX_ID:
            raise VocabError(f"{where} id {pin} is outside 0..{MAX_ID}")
        return pin

    def score_of(item: Mapping[str, Any]) -> float:
        value = item.get("score")
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VocabError(f"score must be a number, not {value!r}")
        return float(value) if value > 0 else 0.0

    delete_set: set[bytes] = set()
    for item in items("delete"):
        tok = token_bytes(item)
        if tok:
            delete_set.add(tok)
    removed: list[bytes] = []
    specials: dict[bytes, tuple[int | None, float]] = {}
    for item in items("special"):
        tok = token_bytes(item)
        if not tok or tok in delete_set:
            continue
        if len(tok) > MAX_TOKEN_LEN:
            raise VocabError(f"special token {tok!r} is {len(tok)} bytes once encoded, more than {MAX_TOKEN_LEN}")
        specials[tok] = (pin_of(item, "special"), score_of(item))
        delete_set.add(tok)
    ascii_bytes = set(range(32, 127)) | {9, 10, 13} | ({0x7F} if capcode == 1 else set())
    single: set[int] = set()
    if include[0]:
        single |= set(range(256))
    if include[1]:
        single |= set(range(128))
    if include[2]:
        single |= ascii_bytes | set(range(0x80, 0xC0)) | set(range(0xC2, 0xF5))
    if include[3]:
        single |= ascii_bytes
    if include[4]:
        chars = _EXTENDED_CHARS if capcode == 2 or norm & 2 else _EXTENDED_CHARS + _EXTENDED_CHARS.upper()
        single |= ascii_bytes | set(normalize(chars.encode(), norm))
    if capcode == 2:
        single -= set(range(0x41, 0x5B)) - {0x43, 0x44, 0x57}
    regular: dict[bytes, tuple[int | None, float]] = {}
    for item in items("tokens"):
        tok = token_bytes(item)
        if not tok or len(tok) > MAX_TOKEN_LEN:
            continue
        if tok in delete_set:
            if tok not in specials and tok not in removed:
                removed.append(tok)
            continue
        if any(sp in tok for sp in specials):
            continue
        if len(tok) == 1:
            if not include[5]:
                single.add(tok[0])
            continue
        if tok not in regular:
            regular[tok] = (pin_of(item, "token"), score_of(item))
    base: dict[bytes, tuple[int | None, float]] = {bytes([b]): (None, 0.0) for b in single}
    base.update(regular)
    base.update(specials)
    order = sorted(base, key=lambda t: (len(t), t))
    vocab_size = len(order)
    single_count = sum(1 for t in order if len(t) == 1)
    pins = {pin for pin, _ in base.values() if pin is not None}
    unk_id: int | None = None
    if use_unk and single_count < (233 if capcode == 2 else 256):
        if unk_pin is not None:
            unk_id = unk_pin
        else:
            unk_id = len(order)
            if unk_id in pins:
                unk_id = next(i for i in range(len(order) + len(pins) + 1) if i not in pins)
        vocab_size += 1
    reserved = pins | ({unk_id} if unk_id is not None else set())
    marker = b"D " if capcode == 2 else b"\x7f "
    entries: dict[bytes, list[Any]] = {}  # token -> [id, score_bits, special]
    duplicates: list[bytes] = []
    free = 0
    for tok in order:
        pin, score = base[tok]
        is_special = tok in specials
        if tok in entries:
            duplicates.append(tok)
            continue
        if pin is not None:
            tid = pin
        else:
            while free in reserved:
                free += 1
            tid = free
            free += 1
        entries[tok] = [tid, _f32_bits(score), is_special]
        if capcode and cls.alnum(_runes(tok)[0]) and len(tok) + 2 <= MAX_TOKEN_LEN:
            variant = marker + tok
            if variant not in entries:
                entries[variant] = [tid, _f32_bits(-1.0), is_special]
    tokens = sorted([*entries, *duplicates], key=lambda t: (len(t), t))
    index_of = {tok: i for i, tok in enumerate(tokens)}
    counts = [[0] * 256 for _ in range(4)]  # letter, space, other, number
    records = []
    for tok in tokens:
        tid, bits, is_special = entries[tok]
        if is_special:
            records.append(_Record(tok, 64, 0, NONE24, NONE24, tid, bits))
        else:
            flags, nwords, alt1, alt2 = _record_properties(tok, cls, index_of, counts)
            records.append(_Record(tok, flags, nwords, alt1, alt2, tid, bits))
    begin = bytes(_begin_class(counts[0][b], counts[1][b], counts[2][b], counts[3][b]) for b in range(256))
    ids = [r.id for r in records]
    table_size = max([vocab_size, *(i + 1 for i in ids), (unk_id + 1) if unk_id is not None else 0])
    marker_tok = b"D" if capcode == 2 else b"\x7f" if capcode == 1 else None
    delete_id = entries[marker_tok][0] if marker_tok in entries else None
    return Vocab(capcode=capcode, charset=charset, normalization=norm, mode=mode, reserve=reserve,
                 unk_id=unk_id, vocab_size=vocab_size, id_table_size=table_size, delete_token_id=delete_id,
                 records=records, begin_byte=begin, deleted=[_Deleted(t, NONE24, 0) for t in removed],
                 name="<yaml>")
