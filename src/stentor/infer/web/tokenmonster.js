// TokenMonster in the browser (and Node 20): the .vocab format, normalization, capcode, the
// branching tokenizer and decoding, plus the Stentor tokenizer layer (added tokens, streaming).
// A line-by-line port of stentor/tokenizer/tokenmonster.py and codec.py, which are the reference:
// the same ids and bytes for every input. No dependencies, no build step.
//
// Unicode: the engine's own Unicode version differs from the reference's (Go's Unicode 13 for
// capcode, Python's Unicode 14 for normalization), so every non-ASCII fact comes from tables that
// stentor/tokenizer/jstables.py generates (`unicode_tables()`); pass them to setUnicodeTables()
// or to Vocab.fromBytes(..., { unicodeTables }). Pure-ASCII text needs no tables. No built-in
// (String.prototype.normalize, toLowerCase) is used, so nothing depends on the engine.
//
//   setUnicodeTables(tables)
//   Vocab.fromBytes(uint8array, name = "<bytes>", { unicodeTables } = {})  -> Vocab (Error: one line)
//     .encode(string | Uint8Array) -> ids   .decode(ids) -> Uint8Array   .decoder() -> { decode(ids), flush() }
//     .prepare(input) -> Uint8Array   .encodePrepared(bytes) -> ids
//     .idTableSize .vocabSize .unkId .deleteTokenId .capcode .charset .normalization .maxTokenLength .name
//   StentorTokenizer.fromConfig(vocab, tokenizerConfig)
//     .encode(text, addSpecialTokens = true) -> ids   .decode(ids, skipSpecialTokens = false) -> string
//     .streamingDecoder(skipSpecialTokens = true) -> { push(ids) -> string, flush() -> string }
//     .tokenPiece(id) -> string   .bosTokenId .eosTokenId .padTokenId .allSpecialIds .added

const NONE24 = 0xffffff;
const MAX_TOKEN_LEN = 40;
const MAX_FILE_BYTES = 512 * 1024 * 1024;
const MAX_ID = 16777213;
const HEADER_LEN = 24;
const MIN_RECORD_LEN = 1 + 1 + 2 + 9 + 4; // length byte, >= 1 token byte, flags+nWords, 3 u24, f32
const LIMIT = 0x110000;
// Invalid UTF-8 bytes kept through NFD are code points LIMIT + byte (no properties, never decompose).
const ESCAPED = LIMIT;

// Go unicode predicates as bits (P_LETTER, P_UPPER, P_LOWER, P_NUMBER, P_MARK, P_SPACE, P_APOS).
const P_UPPER = 2, P_LOWER = 4, P_NUMBER = 8, P_MARK = 16, P_APOS = 64;
const ASCII_PROPS = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  if (c >= 0x41 && c <= 0x5a) ASCII_PROPS[c] = 1 | P_UPPER;
  else if (c >= 0x61 && c <= 0x7a) ASCII_PROPS[c] = 1 | P_LOWER;
  else if (c >= 0x30 && c <= 0x39) ASCII_PROPS[c] = P_NUMBER;
  else if ((c >= 9 && c <= 13) || c === 32) ASCII_PROPS[c] = 32;
  else if (c === 0x27) ASCII_PROPS[c] = P_APOS;
}

// -- Unicode tables ---------------------------------------------------------------------------

const CLS_MN = 1, CLS_IGNORABLE = 2, CLS_CASED = 4;

function tableError(key) {
  return new Error(`Unicode tables: '${key}' is missing or malformed (use stentor's unicode_tables())`);
}

function intList(obj, key, stride) {
  const list = obj[key];
  if (!Array.isArray(list) || list.length % stride !== 0 || !list.every(Number.isInteger)) throw tableError(key);
  return list;
}

// [length, value, ...] covering every code point -> one byte per code point
function expandRuns(obj, key) {
  const list = intList(obj, key, 2);
  const out = new Uint8Array(LIMIT);
  let cp = 0;
  for (let k = 0; k < list.length; k += 2) {
    if (list[k] <= 0 || cp + list[k] > LIMIT) throw tableError(key);
    out.fill(list[k + 1], cp, cp + list[k]);
    cp += list[k];
  }
  if (cp !== LIMIT) throw tableError(key);
  return out;
}

// [gap, length, ...] ranges -> `bit` set in `into`
function expandSet(obj, key, into, bit) {
  const list = intList(obj, key, 2);
  let cp = 0;
  for (let k = 0; k < list.length; k += 2) {
    cp += list[k];
    const end = cp + list[k + 1];
    if (list[k] < 0 || end > LIMIT) throw tableError(key);
    for (; cp < end; cp++) into[cp] |= bit;
  }
}

// [gap, count, step, delta, ...] -> Map(code point -> code point)
function expandMapping(obj, key) {
  const list = intList(obj, key, 4);
  const map = new Map();
  let first = 0;
  for (let k = 0; k < list.length; k += 4) {
    first += list[k];
    for (let q = 0; q < list[k + 1]; q++) {
      const cp = first + q * list[k + 2];
      map.set(cp, cp + list[k + 3]);
    }
  }
  return map;
}

function expandLists(obj, key) {
  const list = obj[key];
  const ok = (e) => Array.isArray(e) && e.length >= 2 && e.every(Number.isInteger);
  if (!Array.isArray(list) || !list.every(ok)) throw tableError(key);
  return new Map(list.map((e) => [e[0], e.slice(1)]));
}

class UnicodeTables {
  constructor(obj) {
    if (obj === null || typeof obj !== "object") throw tableError("props");
    this.props = expandRuns(obj, "props"); // Go props (Unicode 13)
    this.ccc = expandRuns(obj, "ccc"); // canonical combining classes (Python, Unicode 14)
    this.cls = new Uint8Array(LIMIT);
    expandSet(obj, "mn", this.cls, CLS_MN);
    expandSet(obj, "case_ignorable", this.cls, CLS_IGNORABLE);
    expandSet(obj, "cased", this.cls, CLS_CASED); // only where not case-ignorable: all final sigma needs
    this.goLower = expandMapping(obj, "go_lower");
    this.goUpper = expandMapping(obj, "go_upper");
    this.lowerFull = expandLists(obj, "lower_full"); // Python's str.lower where it is not Go's
    // [code point, d1, d2]: one level of canonical decomposition, delta-coded (see jstables.py)
    const nfd = intList(obj, "nfd", 3);
    this.nfd = new Map();
    let cp = 0, base = 0;
    for (let k = 0; k < nfd.length; k += 3) {
      cp += nfd[k];
      base += nfd[k + 1];
      this.nfd.set(cp, nfd[k + 2] ? [base, nfd[k + 2]] : [base]);
    }
  }
}

let defaultTables = null;
const parsedTables = new WeakMap();

function parseTables(obj) {
  let t = parsedTables.get(obj);
  if (!t) {
    t = new UnicodeTables(obj);
    parsedTables.set(obj, t);
  }
  return t;
}

/** Install the tables (the parsed JSON of stentor's unicode_tables()) for every Vocab without its own. */
export function setUnicodeTables(obj) {
  defaultTables = parseTables(obj);
}

function need(U) {
  if (U) return U;
  throw new Error("non-ASCII text needs the Unicode tables: call setUnicodeTables() with stentor's unicode_tables() first");
}

// -- UTF-8 --------------------------------------------------------------------------------------

// Go's utf8.DecodeRune: the code point at buf[i], or -1 for an invalid byte (width 1).
// The width goes out through `runeWidth`, which spares an allocation per rune.
let runeWidth = 1;

function decodeRune(buf, i, n) {
  const c = buf[i];
  runeWidth = 1;
  if (c < 0x80) return c;
  if (c >= 0xc2 && c <= 0xdf) {
    if (i + 1 < n && buf[i + 1] >= 0x80 && buf[i + 1] <= 0xbf) {
      runeWidth = 2;
      return ((c & 0x1f) << 6) | (buf[i + 1] & 0x3f);
    }
    return -1;
  }
  if (c >= 0xe0 && c <= 0xef) {
    const lo = c === 0xe0 ? 0xa0 : 0x80, hi = c === 0xed ? 0x9f : 0xbf;
    if (i + 2 < n && buf[i + 1] >= lo && buf[i + 1] <= hi && buf[i + 2] >= 0x80 && buf[i + 2] <= 0xbf) {
      runeWidth = 3;
      return ((c & 0x0f) << 12) | ((buf[i + 1] & 0x3f) << 6) | (buf[i + 2] & 0x3f);
    }
    return -1;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const lo = c === 0xf0 ? 0x90 : 0x80, hi = c === 0xf4 ? 0x8f : 0xbf;
    if (i + 3 < n && buf[i + 1] >= lo && buf[i + 1] <= hi && buf[i + 2] >= 0x80 && buf[i + 2] <= 0xbf
        && buf[i + 3] >= 0x80 && buf[i + 3] <= 0xbf) {
      runeWidth = 4;
      return ((c & 0x07) << 18) | ((buf[i + 1] & 0x3f) << 12) | ((buf[i + 2] & 0x3f) << 6) | (buf[i + 3] & 0x3f);
    }
  }
  return -1;
}

function putRune(out, o, cp) {
  if (cp < 0x80) {
    out[o] = cp;
    return o + 1;
  }
  if (cp < 0x800) {
    out[o] = 0xc0 | (cp >> 6);
    out[o + 1] = 0x80 | (cp & 0x3f);
    return o + 2;
  }
  if (cp < 0x10000) {
    out[o] = 0xe0 | (cp >> 12);
    out[o + 1] = 0x80 | ((cp >> 6) & 0x3f);
    out[o + 2] = 0x80 | (cp & 0x3f);
    return o + 3;
  }
  out[o] = 0xf0 | (cp >> 18);
  out[o + 1] = 0x80 | ((cp >> 12) & 0x3f);
  out[o + 2] = 0x80 | ((cp >> 6) & 0x3f);
  out[o + 3] = 0x80 | (cp & 0x3f);
  return o + 4;
}

// Code points of UTF-8 bytes; each invalid byte becomes `invalid` (U+FFFD) or, with invalid < 0,
// ESCAPED + byte (Python's surrogateescape).
function decodeCodePoints(data, invalid) {
  const cps = [];
  const n = data.length;
  for (let i = 0; i < n;) {
    const cp = decodeRune(data, i, n);
    cps.push(cp >= 0 ? cp : invalid >= 0 ? invalid : ESCAPED + data[i]);
    i += runeWidth;
  }
  return cps;
}

function encodeCodePoints(cps) {
  const out = new Uint8Array(4 * cps.length);
  let o = 0;
  for (const cp of cps) {
    if (cp >= ESCAPED) out[o++] = cp - ESCAPED;
    else o = putRune(out, o, cp);
  }
  return out.slice(0, o);
}

const utf8Encoder = new TextEncoder();

function hasLoneSurrogate(text) {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = text.charCodeAt(i + 1); // NaN past the end
      if (!(d >= 0xdc00 && d <= 0xdfff)) return true;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return true;
    }
  }
  return false;
}

// UTF-8 of a JS string as Python writes it: lone surrogates with errors="surrogatepass" (3 bytes
// each), or with escape=true as Python's text_to_bytes does (U+DC80..U+DCFF back to the byte they
// stand for when every lone surrogate is one of those, else surrogatepass for all).
function utf8Bytes(text, escape = false) {
  if (!hasLoneSurrogate(text)) return utf8Encoder.encode(text); // TextEncoder would write U+FFFD for them
  const cps = [];
  for (const ch of text) cps.push(ch.codePointAt(0));
  const lone = cps.filter((cp) => cp >= 0xd800 && cp < 0xe000);
  if (escape && lone.every((cp) => cp >= 0xdc80 && cp <= 0xdcff)) {
    return encodeCodePoints(cps.map((cp) => (cp >= 0xdc80 && cp <= 0xdcff ? ESCAPED + cp - 0xdc00 : cp)));
  }
  return encodeCodePoints(cps);
}

// Python's bytes.decode("utf-8", errors="replace"): keeps a BOM (TextDecoder would drop it) and
// replaces each maximal invalid subpart with one U+FFFD, as both do.
function textDecoder() {
  return new TextDecoder("utf-8", { ignoreBOM: true });
}

// -- normalization ------------------------------------------------------------------------------

const NORM_NFD = 1, NORM_LOWER = 2, NORM_ACCENTS = 4, NORM_QUOTES = 8, NORM_COLLAPSE = 16,
  NORM_TRIM = 32, NORM_LEAD = 64, NORM_UNIX = 128;
const CURLY = { 0x98: 0x27, 0x99: 0x27, 0x9c: 0x22, 0x9d: 0x22 };

function isAscii(data) {
  for (let i = 0; i < data.length; i++) if (data[i] >= 0x80) return false;
  return true;
}

function decompose(cp, U, out) {
  const s = cp - 0xac00; // Hangul syllables decompose by arithmetic
  if (s >= 0 && s < 11172) {
    out.push(0x1100 + Math.floor(s / 588), 0x1161 + Math.floor((s % 588) / 28));
    if (s % 28) out.push(0x11a7 + (s % 28));
    return;
  }
  const d = U.nfd.get(cp);
  if (d === undefined) {
    out.push(cp);
    return;
  }
  for (const part of d) decompose(part, U, out);
}

// Python's unicodedata.normalize("NFD"): full canonical decomposition, then the stable canonical
// reordering of combining marks (CPython's insertion sort).
function nfd(cps, U) {
  if (cps.every((cp) => cp < 0xc0)) return cps; // nothing below U+00C0 decomposes or combines
  const out = [];
  for (const cp of cps) decompose(cp, U, out);
  const ccc = (cp) => (cp < LIMIT ? U.ccc[cp] : 0);
  for (let i = 1; i < out.length; i++) {
    const cur = ccc(out[i]);
    if (cur === 0) continue;
    let o = i - 1;
    while (o >= 0 && ccc(out[o]) > cur) {
      [out[o], out[o + 1]] = [out[o + 1], out[o]];
      o--;
    }
  }
  return out;
}

function nfdBytes(data, U) {
  if (isAscii(data)) return data;
  return encodeCodePoints(nfd(decodeCodePoints(data, -1), need(U)));
}

// CPython's str.lower(): full case mapping, U+03A3 as final sigma by its context.
function pyLower(cps, U) {
  const out = [];
  const cls = (cp) => (cp < LIMIT ? U.cls[cp] : 0);
  for (let i = 0; i < cps.length; i++) {
    const c = cps[i];
    if (c < 0x80) {
      out.push(c >= 0x41 && c <= 0x5a ? c + 32 : c);
    } else if (c === 0x3a3) {
      let j = i - 1;
      while (j >= 0 && cls(cps[j]) & CLS_IGNORABLE) j--;
      let final = j >= 0 && (cls(cps[j]) & CLS_CASED) !== 0;
      if (final && i + 1 < cps.length) {
        j = i + 1;
        while (j < cps.length && cls(cps[j]) & CLS_IGNORABLE) j++;
        final = j === cps.length || !(cls(cps[j]) & CLS_CASED);
      }
      out.push(final ? 0x3c2 : 0x3c3);
    } else {
      const full = U.lowerFull.get(c);
      if (full) out.push(...full);
      else out.push(U.goLower.get(c) ?? c);
    }
  }
  return out;
}

// unixlines / quotemarks / collapse as upstream's in-place loop, quirk included (note §2)
function fusedCleanup(data, flags) {
  const unix = flags & NORM_UNIX, quotes = flags & NORM_QUOTES, collapse = flags & NORM_COLLAPSE;
  const n = data.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (let i = 0; i < n; i++) {
    const c = data[i];
    if (unix && c === 0x0d && i + 1 < n && data[i + 1] === 0x0a) continue;
    if (collapse && c === 0x20 && i > 0 && data[i - 1] === 0x20) continue;
    if (quotes && c in CURLY && i >= 2 && data[i - 2] === 0xe2 && data[i - 1] === 0x80 && i - o !== 1) {
      o = Math.max(0, o - 2);
      out[o++] = CURLY[c];
      continue;
    }
    out[o++] = c;
  }
  return out.subarray(0, o);
}

function withSpace(data) {
  const out = new Uint8Array(data.length + 1);
  out[0] = 0x20;
  out.set(data, 1);
  return out;
}

function trimAndLead(data, flags) {
  const trim = flags & NORM_TRIM, lead = flags & NORM_LEAD;
  if (trim && lead) {
    let end = data.length;
    while (end > 0 && data[end - 1] <= 0x20) end--;
    if (end <= 1 && (end === 0 || data[0] > 0x20)) return data.subarray(0, 0);
    if (data[0] > 0x20) return withSpace(data.subarray(0, end - 1)); // upstream drops the last byte here
    let start = 0;
    while (data[start] <= 0x20) start++;
    return withSpace(data.subarray(start, end));
  }
  if (trim) {
    let start = 0, end = data.length;
    while (start < end && data[start] <= 0x20) start++;
    while (end > start && data[end - 1] <= 0x20) end--;
    return data.subarray(start, end);
  }
  if (lead && data.length && data[0] !== 0x20) return withSpace(data);
  return data;
}

function stripMarks(cps, U) {
  return cps.filter((cp) => cp >= LIMIT || !(U.cls[cp] & CLS_MN));
}

/** The vocabulary's normalization (flags as in the .vocab header) of raw input bytes. */
function normalize(data, flags, U) {
  if (flags === 0) return data;
  if (flags === NORM_NFD) return nfdBytes(data, U);
  if (flags & (NORM_QUOTES | NORM_COLLAPSE | NORM_UNIX)) data = fusedCleanup(data, flags);
  data = trimAndLead(data, flags);
  if (flags & (NORM_ACCENTS | NORM_LOWER)) {
    let cps = decodeCodePoints(data, 0xfffd);
    if (!cps.every((cp) => cp < 0x80)) { // ASCII has no marks and is its own NFD
      if (flags & NORM_ACCENTS) cps = stripMarks(nfd(cps, need(U)), U);
      else if (flags & NORM_NFD) cps = nfd(cps, need(U));
    }
    return encodeCodePoints(flags & NORM_LOWER ? pyLower(cps, U) : cps);
  }
  if (flags & NORM_NFD) return nfdBytes(data, U);
  return data;
}

// -- capcode ------------------------------------------------------------------------------------

function runeProps(cp, U) {
  if (cp < 0) return 0;
  return cp < 128 ? ASCII_PROPS[cp] : need(U).props[cp];
}

function runeLower(cp, U) {
  if (cp < 0) return cp;
  if (cp < 128) return cp >= 0x41 && cp <= 0x5a ? cp + 32 : cp;
  return need(U).goLower.get(cp) ?? cp;
}

function runeUpper(cp, U) {
  if (cp < 128) return cp >= 0x61 && cp <= 0x7a ? cp - 32 : cp;
  return need(U).goUpper.get(cp) ?? cp;
}

// Capcode level 1: a 0x7F+space delete marker before words/numbers glued to preceding text.
function capcode1(buf, n, U, out) {
  let o = 0, prev = -1, prevp = 0, prev2p = 0;
  for (let i = 0; i < n;) {
    let r = buf[i], w = 1, p;
    if (r < 128) {
      p = ASCII_PROPS[r];
    } else {
      r = decodeRune(buf, i, n);
      w = runeWidth;
      p = runeProps(r, U);
    }
    if (p & 1) {
      if (!(prev === 32 || (prevp & 17) !== 0 || ((prevp & 64) !== 0 && (prev2p & 1) !== 0))) {
        out[o++] = 0x7f;
        out[o++] = 32;
      }
    } else if (p & 8) {
      if (!(prev === 32 || (prevp & 8) !== 0)) {
        out[o++] = 0x7f;
        out[o++] = 32;
      }
    }
    if (r === 0x7f) out[o++] = 0x14;
    else for (let q = 0; q < w; q++) out[o++] = buf[i + q];
    i += w;
    prev2p = prevp;
    prevp = p;
    prev = r;
  }
  return o;
}

// Put `DC ` before every lowercase rune in out[start:end] (turning a preceding `D ` into `DC `),
// in place from the back; returns the new end.
function insertCaseMarkers(out, isll, start, end) {
  let extra = 0;
  for (let q = start; q < end; q++) {
    if (isll[q] === 1) extra += q - 2 >= start && out[q - 2] === 68 && out[q - 1] === 32 ? 1 : 3;
  }
  let src = end - 1, dst = end - 1 + extra;
  while (src >= start) {
    const flag = isll[src];
    out[dst] = out[src];
    isll[dst] = flag;
    dst--;
    if (flag === 1) {
      const glued = src - 2 >= start && out[src - 2] === 68 && out[src - 1] === 32;
      out[dst] = 32;
      out[dst - 1] = 67;
      isll[dst] = 0;
      isll[dst - 1] = 0;
      dst -= 2;
      if (glued) {
        src -= 2;
        continue;
      }
      out[dst] = 68;
      isll[dst] = 0;
      dst--;
    }
    src--;
  }
  return end + extra;
}

// Capcode level 2: lowercase everything, marking case with C/W and glued words with D.
// isll[o] is 1 where a lowercase rune starts in `out`.
function capcode2(buf, n, U, out, isll) {
  let o = 0, prev = -1, prevp = 0, prev2p = 0;
  let inRun = false, wpos = 0, firstEnd = 0, multi = false;
  for (let i = 0; i < n;) {
    let r = buf[i], w = 1, p;
    if (r < 128) {
      p = ASCII_PROPS[r];
    } else {
      r = decodeRune(buf, i, n);
      w = runeWidth;
      p = runeProps(r, U);
    }
    let mark = 0, lowered = false;
    if (!inRun) {
      if (p & 4) {
        if (!(prev === 32 || (prevp & 20) !== 0 || ((prevp & 64) !== 0 && (prev2p & 1) !== 0))) mark = 1;
      } else if (p & 2) {
        if (prev === 32) {
          out[o - 1] = 87;
          wpos = o - 1;
          out[o] = 32;
          isll[o] = 0;
          o++;
        } else {
          mark = 2;
          wpos = o + 1;
        }
        lowered = true;
        inRun = true;
        multi = false;
      } else if ((p & 8) !== 0 && !(prev === 32 || (prevp & 8) !== 0)) {
        mark = 1;
      }
    } else if (p & 2) {
      if ((prevp & 81) === 0) mark = 1;
      multi = true;
      lowered = true;
    } else if (p & 4) {
      inRun = false;
      out[wpos] = 67;
      if (multi) o = insertCaseMarkers(out, isll, firstEnd, o);
      if ((prevp & 81) === 0) mark = 1;
    } else if (p & 8) {
      if ((prevp & 8) === 0) mark = 1;
    } else if ((p & 80) === 0) {
      inRun = false;
    }
    if (mark === 2) {
      out[o] = 68;
      out[o + 1] = 87;
      out[o + 2] = 32;
      isll[o] = isll[o + 1] = isll[o + 2] = 0;
      o += 3;
    } else if (mark === 1) {
      out[o] = 68;
      out[o + 1] = 32;
      isll[o] = isll[o + 1] = 0;
      o += 2;
    }
    const start = o;
    let ll;
    if (lowered) {
      const low = runeLower(r, U);
      o = putRune(out, o, low);
      ll = (runeProps(low, U) & 4) !== 0 ? 1 : 0;
    } else {
      for (let q = 0; q < w; q++) out[o++] = buf[i + q];
      ll = (p & 4) !== 0 ? 1 : 0;
    }
    isll[start] = ll;
    for (let q = start + 1; q < o; q++) isll[q] = 0;
    if (lowered && mark !== 1 && !multi) firstEnd = o;
    i += w;
    prev2p = prevp;
    prevp = p;
    prev = r;
  }
  return o;
}

function capcodeEncode(data, level, U) {
  const n = data.length;
  if (level === 0 || n === 0) return data;
  // per rune of w bytes: at most a 3-byte marker plus its lowercase form (<= w + 1 bytes)
  const out = new Uint8Array(level === 1 ? 3 * n + 8 : 5 * n + 8);
  const count = level === 1 ? capcode1(data, n, U, out) : capcode2(data, n, U, out, new Uint8Array(out.length));
  return out.slice(0, count);
}

// Capcode decoding state, kept across the chunks of a stream.
function capState() {
  return { char: false, word: false, del: false, ignore: false };
}

function decodeCap2(data, st, U) {
  const n = data.length;
  if (n === 0) return data;
  const out = new Uint8Array(2 * n); // an uppercase form is at most one byte longer than a >= 2-byte rune
  let o = 0;
  for (let i = 0; i < n;) {
    const c = data[i];
    const cp = c < 0x80 ? c : decodeRune(data, i, n);
    const w = c < 0x80 ? 1 : runeWidth;
    i += w;
    if (cp === 67) {
      st.char = true;
      st.word = false;
      continue;
    }
    if (cp === 87) {
      st.word = true;
      st.char = false;
      st.ignore = true;
      continue;
    }
    if (cp === 68) {
      st.del = true;
      continue;
    }
    let upper = false;
    if (cp === 32) {
      if (st.del) {
        st.del = false;
      } else {
        out[o++] = 32;
        if (!st.ignore) st.word = false;
      }
    } else if (st.del) {
      st.del = false;
    } else if (st.char) {
      st.char = false;
      upper = true;
    } else if (st.word) {
      const p = runeProps(cp, U);
      upper = (p & (P_UPPER | P_LOWER)) !== 0;
      if (!(p & (P_UPPER | P_LOWER | P_NUMBER | P_APOS | P_MARK))) st.word = false;
      if (!upper) for (let q = i - w; q < i; q++) out[o++] = data[q];
    } else {
      for (let q = i - w; q < i; q++) out[o++] = data[q];
    }
    if (upper) {
      if (cp < 0) out[o++] = data[i - 1]; // an invalid byte has no case
      else o = putRune(out, o, runeUpper(cp, U));
    }
    st.ignore = false;
  }
  return out.slice(0, o);
}

function decodeCap1(data, st) {
  const out = new Uint8Array(data.length);
  let o = 0;
  for (const c of data) {
    if (st.del) st.del = false;
    else if (c === 0x7f) st.del = true;
    else out[o++] = c;
  }
  return out.subarray(0, o);
}

// Length of a trailing valid-but-unfinished UTF-8 sequence (0 if the data ends cleanly).
function incompleteUtf8Tail(data) {
  const n = data.length;
  for (let back = 1; back <= Math.min(3, n); back++) {
    const lead = data[n - back];
    if (lead >= 0x80 && lead < 0xc0) continue;
    const want = lead >= 0xc2 && lead <= 0xdf ? 2 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xf0 && lead <= 0xf4 ? 4 : 0;
    if (want <= back) return 0;
    if (back >= 2) {
      const second = data[n - back + 1];
      const lo = lead === 0xe0 ? 0xa0 : lead === 0xf0 ? 0x90 : 0x80;
      const hi = lead === 0xed ? 0x9f : lead === 0xf4 ? 0x8f : 0xbf;
      if (second < lo || second > hi) return 0;
    }
    return back;
  }
  return 0;
}

function concatBytes(parts) {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// -- the branching tokenizer -------------------------------------------------------------------

// The trie's edges live in `etab`, an open-addressing hash of 4 ints a slot: parent node (-1 = empty
// slot), byte, child node, and the record that ends at the child (-1 = none).
// edgeSlot gives the slot of edge (node, c), or the empty slot where it would go.
function edgeSlot(etab, emask, node, c) {
  let slot = (Math.imul(node, -1640531535) + Math.imul(c, 40503)) & emask;
  for (;;) {
    const k = etab[4 * slot];
    if (k === -1 || (k === node && etab[4 * slot + 1] === c)) return slot;
    slot = (slot + 1) & emask;
  }
}

// Longest record along the trie path from `node` over text[start:end]; -1 if none.
function longest(text, start, end, node, etab, emask) {
  let best = -1;
  for (let q = start; q < end; q++) {
    const slot = edgeSlot(etab, emask, node, text[q]);
    if (etab[4 * slot] === -1) break;
    node = etab[4 * slot + 2];
    const rec = etab[4 * slot + 3];
    if (rec >= 0) best = rec;
  }
  return best;
}

// The "ungreedy" branching tokenizer (research note §5); returns the number of ids in `out`.
// `text` has one extra byte at index n (the look-ahead byte, 0). `lp`/`lpb` cache the
// longest-prefix lookups per position (-2 = not computed yet). Returns -1 if `out` fills up.
function tokenize(text, n, T, unk, delid, out, lp, lpb) {
  const { rlen, rid, rflags, rnw, ralt1, ralt2, etab, emask, begin, spaceNode, o, maxlen } = T;
  const cap = out.length;
  let count = 0, i = 0, cur = -1, clen = 0, fd = 0;
  while (i < n) {
    if (count + 2 > cap) return -1;
    if (cur < 0) {
      if (lp[i] === -2) lp[i] = longest(text, i, Math.min(n, i + maxlen), 0, etab, emask);
      cur = lp[i];
      if (cur < 0) {
        if (unk >= 0) out[count++] = unk;
        i++;
        fd = 0;
        continue;
      }
      clen = rlen[cur];
    }
    const j1 = i + clen;
    if (j1 >= n || ((rflags[cur] & 32) !== 0 && begin[text[j1]] === 12)) {
      out[count++] = rid[cur];
      i = j1;
      fd = 0;
      cur = -1;
      continue;
    }
    let best = -1000000000, bestBranch = -1, bestA = 0, bestNext = -1, bestNlen = 0;
    for (let branch = 0; branch < 6; branch++) {
      const base = branch % 3;
      let frec, a;
      if (base === 0) {
        frec = cur;
        a = clen;
      } else {
        frec = base === 1 ? ralt1[cur] : ralt2[cur];
        if (frec < 0) continue;
        a = rlen[frec] - fd;
      }
      const j = i + a;
      if (j >= n) continue;
      if (lp[j] === -2) lp[j] = longest(text, j, Math.min(n, j + maxlen), 0, etab, emask);
      const s = lp[j];
      if (s < 0) continue;
      const ff = rflags[frec], nwf = rnw[frec] - fd, slen = rlen[s], sf = rflags[s];
      let score, total, nxt, nlen;
      if (branch < 3) {
        const nbk = begin[text[j + slen]];
        score = a + slen + (ff >> 7) + (sf >> 7) + Math.max(0, nwf - 1) + Math.max(0, rnw[s] - 1)
          + ((sf >> 2) & 1) + ((nbk >> 2) & 1) + 100 * (nwf + rnw[s] + (nbk >> 3));
        if ((ff & 1) !== 0 && (sf & 2) !== 0) score -= 103;
        if ((ff & 8) !== 0 && (sf & 16) !== 0) score -= 100;
        if ((sf & 1) !== 0 && (nbk & 1) !== 0) score -= 3;
        total = a + slen;
        nxt = s;
        nlen = slen;
      } else {
        if (delid < 0 || (sf & 2) === 0 || rnw[s] !== 0 || begin[text[j + slen]] !== 1) continue;
        if (lpb[j] === -2) lpb[j] = longest(text, j, Math.min(n, j + maxlen - o), spaceNode, etab, emask);
        const s2 = lpb[j];
        if (s2 < 0 || rlen[s2] <= slen + 1) continue;
        const b = rlen[s2] - o;
        const nbk = begin[text[j + b]];
        const s2f = rflags[s2];
        score = a + b + (ff >> 7) + (s2f >> 7) + Math.max(0, nwf - 1) + Math.max(0, rnw[s2] - 1)
          + ((nbk >> 2) & 1) + 100 * (nwf + rnw[s2] + (nbk >> 3)) - 1;
        if ((ff & 1) !== 0) score -= 103;
        if ((ff & 8) !== 0 && (s2f & 16) !== 0) score -= 100;
        if ((s2f & 1) !== 0 && (nbk & 1) !== 0) score -= 3;
        total = a + b;
        nxt = s2;
        nlen = b;
      }
      if (base !== 0) {
        if (total < clen) score -= 100;
        else if (total === clen) score -= 10000;
      }
      if (score > best) {
        best = score;
        bestBranch = branch;
        bestA = a;
        bestNext = nxt;
        bestNlen = nlen;
      }
    }
    if (bestBranch < 0) {
      out[count++] = rid[cur];
      i += clen;
      fd = 0;
      cur = -1;
      continue;
    }
    const base = bestBranch % 3;
    out[count++] = rid[base === 0 ? cur : base === 1 ? ralt1[cur] : ralt2[cur]];
    if (bestBranch >= 3) {
      out[count++] = delid;
      fd = 1;
    } else {
      fd = 0;
    }
    i += bestA;
    cur = bestNext;
    clen = bestNlen;
  }
  return count;
}

// -- vocabulary -----------------------------------------------------------------------------------

function u24(data, off) {
  return data[off] | (data[off + 1] << 8) | (data[off + 2] << 16);
}

function maxTokenLength(records) {
  let most = 0;
  for (const r of records) most = Math.max(most, r.token.length);
  return most;
}

function compareTokens(a, b) {
  if (a.length !== b.length) return a.length - b.length;
  for (let k = 0; k < a.length; k++) if (a[k] !== b[k]) return a[k] - b[k];
  return 0;
}

/** A TokenMonster vocabulary: the .vocab file's contents plus the tables encode/decode need. */
export class Vocab {
  constructor(fields) { // from Vocab.fromBytes
    Object.assign(this, fields);
    this.maxTokenLength = maxTokenLength(this._records);
    this._table = new Map(); // id -> token bytes; the last record wins (the capcode variant)
    for (const r of this._records) this._table.set(r.id, r.token);
    this._tok = null;
  }

  /** Parse a .vocab image (Uint8Array), rejecting anything truncated, inconsistent or oversized. */
  static fromBytes(data, name = "<bytes>", options = {}) {
    if (!(data instanceof Uint8Array)) throw new TypeError(`${name}: expected the .vocab file as a Uint8Array`);
    const size = data.length;
    const fail = (msg) => new Error(`${name}: ${msg} (file is ${size} bytes)`);
    if (size > MAX_FILE_BYTES) throw fail(`more than the ${MAX_FILE_BYTES} byte limit`);
    if (size < HEADER_LEN + 256 + 3) throw fail("too short for a vocabulary header");
    const [capcode, charset, norm, mode] = data;
    if (capcode > 2) throw fail(`capcode level ${capcode} is not 0, 1 or 2`);
    if (charset > 2) throw fail(`charset ${charset} is not 0, 1 or 2`);
    const unk = u24(data, 8), vsize = u24(data, 11), tsize = u24(data, 14), count = u24(data, 17),
      delid = u24(data, 20), maxlen = data[23];
    if (tsize > MAX_ID + 2) throw fail(`id table size ${tsize} exceeds ${MAX_ID + 2}`);
    if (unk !== NONE24 && unk >= tsize) throw fail(`UNK id ${unk} is outside the id table of size ${tsize}`);
    if (count * MIN_RECORD_LEN > size - HEADER_LEN - 256 - 3) {
      throw fail(`header announces ${count} token records, more than the file can hold`);
    }
    const records = [];
    let off = HEADER_LEN;
    let prev = new Uint8Array(0);
    for (let r = 0; r < count; r++) {
      const length = off < size ? data[off] : 0;
      if (off + 1 + length + 15 > size) throw fail(`truncated token record ${r} at byte ${off}`);
      if (length < 1 || length > MAX_TOKEN_LEN) {
        throw fail(`token record ${r} at byte ${off} has length ${length}, not 1..${MAX_TOKEN_LEN}`);
      }
      const token = data.slice(off + 1, off + 1 + length);
      off += 1 + length;
      const flags = data[off], nwords = data[off + 1];
      const alt1 = u24(data, off + 2), alt2 = u24(data, off + 5), id = u24(data, off + 8);
      off += 15; // and the f32 score, which encoding does not use
      if (compareTokens(token, prev) < 0) throw fail(`token record ${r} is out of (length, bytes) order`);
      prev = token;
      if ((alt1 !== NONE24 && alt1 >= r) || (alt2 !== NONE24 && (alt2 >= r || alt1 === NONE24))) {
        throw fail(`token record ${r} has an invalid alternative index`);
      }
      if (id >= tsize) throw fail(`token record ${r} has id ${id} outside the id table of size ${tsize}`);
      records.push({ token, flags, nwords, alt1, alt2, id });
    }
    if (off + 256 + 3 > size) throw fail(`truncated before the begin-byte table at byte ${off}`);
    const begin = data.slice(off, off + 256);
    off += 256;
    const ndel = u24(data, off);
    off += 3;
    if (ndel * 8 > size - off) throw fail(`announces ${ndel} deleted tokens, more than the file can hold`);
    for (let r = 0; r < ndel; r++) {
      const length = off < size ? data[off] : 0;
      if (off + 1 + length + 7 > size) throw fail(`truncated deleted-token record ${r} at byte ${off}`);
      off += 1 + length + 7; // deleted tokens only matter to training
    }
    if (off !== size) throw fail(`${size - off} trailing bytes after byte ${off}`);
    if (maxlen !== maxTokenLength(records)) {
      throw fail(`header max token length ${maxlen} does not match the records`);
    }
    if (delid !== NONE24 && (delid >= tsize || !records.some((r) => r.id === delid && r.token.length === 1))) {
      throw fail(`delete-token id ${delid} is not a single-byte token`);
    }
    return new Vocab({
      name, capcode, charset, normalization: norm, mode, vocabSize: vsize, idTableSize: tsize,
      unkId: unk === NONE24 ? null : unk, deleteTokenId: delid === NONE24 ? null : delid,
      _records: records, _begin: begin,
      _unicode: options.unicodeTables ? parseTables(options.unicodeTables) : null,
    });
  }

  get _uni() {
    return this._unicode || defaultTables;
  }

  // Record tables and the flattened trie for the tokenizer kernel.
  _arrays() {
    if (this._tok) return this._tok;
    const recs = this._records;
    let bytes = 0; // at least the number of edges: the table stays under half full
    for (const r of recs) bytes += r.token.length;
    let size = 16;
    while (size < 2 * bytes + 1) size *= 2;
    const emask = size - 1;
    const etab = new Int32Array(4 * size).fill(-1);
    const n = recs.length;
    const rlen = new Uint8Array(n), rid = new Int32Array(n), rflags = new Uint8Array(n), rnw = new Uint8Array(n);
    const ralt1 = new Int32Array(n), ralt2 = new Int32Array(n);
    let nodes = 1;
    for (let idx = 0; idx < n; idx++) {
      const rec = recs[idx], token = rec.token;
      let node = 0, slot = 0;
      for (let q = 0; q < token.length; q++) {
        slot = edgeSlot(etab, emask, node, token[q]);
        if (etab[4 * slot] === -1) {
          etab[4 * slot] = node;
          etab[4 * slot + 1] = token[q];
          etab[4 * slot + 2] = nodes++;
        }
        node = etab[4 * slot + 2];
      }
      etab[4 * slot + 3] = idx; // a later record with the same bytes wins, as in Python
      rlen[idx] = token.length;
      rid[idx] = rec.id;
      rflags[idx] = rec.flags;
      rnw[idx] = rec.nwords;
      ralt1[idx] = rec.alt1 === NONE24 ? -1 : rec.alt1;
      ralt2[idx] = rec.alt2 === NONE24 ? -1 : rec.alt2;
    }
    const child = (node, c) => {
      const slot = edgeSlot(etab, emask, node, c);
      return etab[4 * slot] === -1 ? -1 : etab[4 * slot + 2];
    };
    const o = this.charset === 2 ? 2 : 1;
    let spaceNode = child(0, 32);
    if (o === 2 && spaceNode >= 0) spaceNode = child(spaceNode, 0);
    this._tok = {
      rlen, rid, rflags, rnw, ralt1, ralt2, etab, emask, begin: this._begin, spaceNode, o, maxlen: this.maxTokenLength,
    };
    return this._tok;
  }

  /** Normalize and capcode-encode input: a string (UTF-8 encoded) or a Uint8Array of raw bytes. */
  prepare(input) {
    let data;
    if (typeof input === "string") data = utf8Bytes(input);
    else if (input instanceof Uint8Array) data = input;
    else throw new TypeError(`expected a string or a Uint8Array, not ${input === null ? "null" : typeof input}`);
    const U = this._uni;
    return capcodeEncode(normalize(data, this.normalization, U), this.capcode, U);
  }

  /** Tokenize bytes that are already normalized and capcoded. */
  encodePrepared(text) {
    const n = text.length;
    if (n === 0 || this.maxTokenLength === 0) return [];
    const T = this._arrays();
    const buf = new Uint8Array(n + 1); // the look-ahead byte at n is 0
    buf.set(text);
    const out = new Int32Array(2 * n + 8);
    const lp = new Int32Array(n + 1).fill(-2);
    const lpb = new Int32Array(n + 1).fill(-2);
    const unk = this.unkId === null ? -1 : this.unkId;
    const delid = this.deleteTokenId === null || T.spaceNode < 0 ? -1 : this.deleteTokenId;
    const count = tokenize(buf, n, T, unk, delid, out, lp, lpb);
    if (count < 0) throw new Error(`${this.name}: tokenizer made no progress on a ${n}-byte input`);
    return Array.from(out.subarray(0, count));
  }

  /** Token ids: normalization, capcode, then the branching tokenizer. */
  encode(input) {
    return this.encodePrepared(this.prepare(input));
  }

  _rawJoin(ids) {
    const parts = [];
    for (const id of ids) {
      const tok = this._table.get(Number(id));
      if (tok) parts.push(tok);
    }
    return concatBytes(parts);
  }

  _capdecode(raw, state) {
    if (this.capcode === 2) return decodeCap2(raw, state, this._uni);
    if (this.capcode === 1) return decodeCap1(raw, state);
    return raw;
  }

  /** Bytes for token ids (UNK, gaps and unknown ids give nothing). */
  decode(ids) {
    return this._capdecode(this._rawJoin(ids), capState());
  }

  /** A stream decoder: decode(ids) never ends in half a UTF-8 character; flush() gives the rest. */
  decoder() {
    return new StreamDecoder(this);
  }
}

class StreamDecoder {
  constructor(vocab) {
    this._vocab = vocab;
    this._held = new Uint8Array(0);
    this._state = capState();
  }

  decode(ids) {
    const raw = concatBytes([this._held, this._vocab._rawJoin(ids)]);
    const keep = incompleteUtf8Tail(raw);
    this._held = raw.slice(raw.length - keep);
    return this._vocab._capdecode(raw.subarray(0, raw.length - keep), this._state);
  }

  flush() {
    const raw = this._held;
    this._held = new Uint8Array(0);
    return this._vocab._capdecode(raw, this._state);
  }
}

// -- the Stentor tokenizer (stentor.tokenizer.codec.TextCodec) ------------------------------------

// Python truthiness of a JSON value, as bool(config.get(...)) reads it.
function truthy(value) {
  if (Array.isArray(value)) return value.length > 0;
  if (value && typeof value === "object") return Object.keys(value).length > 0;
  return Boolean(value);
}

function escapeRegExp(text) {
  return text.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");
}

/** Text <-> ids like a saved StentorTokenizer: added tokens in text become their ids. */
export class StentorTokenizer {
  constructor(vocab, added, { bos, eos, pad, addBos = true, addEos = false }) {
    this.vocab = vocab;
    this.added = added; // Map(id -> { content, special })
    this._ids = new Map();
    for (const [id, token] of added) this._ids.set(token.content, id);
    this.bosTokenId = this._ids.get(bos ?? "") ?? null;
    this.eosTokenId = this._ids.get(eos ?? "") ?? null;
    this.padTokenId = this._ids.get(pad ?? "") ?? null;
    this.addBos = addBos;
    this.addEos = addEos;
    this.allSpecialIds = [...added].filter(([, t]) => t.special).map(([id]) => id).sort((a, b) => a - b);
    // Cut at added-token names, longest first (the match transformers' trie makes); "" never matches
    const names = [...this._ids.keys()].filter((s) => s !== "").sort((a, b) => [...b].length - [...a].length);
    this._split = names.length ? new RegExp(`(${names.map(escapeRegExp).join("|")})`, "u") : null;
  }

  /** From the parsed tokenizer_config.json of a directory StentorTokenizer.save_pretrained wrote. */
  static fromConfig(vocab, config) {
    if (config === null || typeof config !== "object" || Array.isArray(config)) {
      throw new Error("tokenizer_config.json holds no JSON object");
    }
    if (config.tokenizer_class !== "StentorTokenizer") {
      throw new Error(`tokenizer_config.json does not describe a StentorTokenizer (tokenizer_class ${JSON.stringify(config.tokenizer_class ?? null)})`);
    }
    // A parsed object lists integer keys ascending, Python's dict in file order: that only matters if two
    // ids share one content (the later wins), and save_pretrained writes them ascending anyway.
    const entries = [];
    for (const [key, token] of Object.entries(config.added_tokens_decoder || {})) {
      const id = Number(key);
      if (!/^\s*[-+]?\d+\s*$/.test(key) || !token || typeof token.content !== "string") {
        throw new Error(`tokenizer_config.json: added token ${JSON.stringify(key)} needs an integer id and a string content`);
      }
      entries.push([id, { content: token.content, special: "special" in token ? truthy(token.special) : true }]);
    }
    const flag = (key, missing) => (key in config ? truthy(config[key]) : missing);
    const name = (key) => {
      const value = config[key];
      return value && typeof value === "object" ? value.content : value;
    };
    return new StentorTokenizer(vocab, new Map(entries), {
      bos: name("bos_token"), eos: name("eos_token"), pad: name("pad_token"),
      addBos: flag("add_bos_token", true), addEos: flag("add_eos_token", false),
    });
  }

  /** Runs of TokenMonster ids, and the text of the added tokens between them (codec.split_segments). */
  *_segments(ids, skipSpecialTokens) {
    const base = this.vocab.idTableSize;
    let run = [];
    for (const value of ids) {
      const id = Number(value);
      if (id >= 0 && id < base) {
        run.push(id);
      } else if (this.added.has(id)) {
        yield run;
        run = [];
        const token = this.added.get(id);
        yield skipSpecialTokens && token.special ? "" : token.content;
      }
    }
    yield run;
  }

  encode(text, addSpecialTokens = true) {
    const out = addSpecialTokens && this.addBos && this.bosTokenId !== null ? [this.bosTokenId] : [];
    const parts = this._split ? text.split(this._split) : [text];
    parts.forEach((part, k) => {
      if (!part) return;
      if (k % 2) out.push(this._ids.get(part));
      else for (const id of this.vocab.encode(utf8Bytes(part, true))) out.push(id);
    });
    if (addSpecialTokens && this.addEos && this.eosTokenId !== null) out.push(this.eosTokenId);
    return out;
  }

  decode(ids, skipSpecialTokens = false) {
    let text = "";
    for (const seg of this._segments(ids, skipSpecialTokens)) {
      text += typeof seg === "string" ? seg : textDecoder().decode(this.vocab.decode(seg));
    }
    return text;
  }

  /** What one token decodes to on its own (for showing tokens). */
  tokenPiece(id) {
    return this.decode([id], false);
  }

  streamingDecoder(skipSpecialTokens = true) {
    return new StreamingDecoder(this, skipSpecialTokens);
  }
}

/** push(ids) returns only complete characters, flush() the rest; the concatenation equals decode(all). */
class StreamingDecoder {
  constructor(tokenizer, skipSpecialTokens) {
    this._tokenizer = tokenizer;
    this._skip = skipSpecialTokens;
    this._startRun();
  }

  _startRun() {
    this._bytes = this._tokenizer.vocab.decoder();
    this._text = textDecoder();
  }

  _endRun() {
    const text = this._text.decode(this._bytes.flush());
    this._startRun();
    return text;
  }

  push(ids) {
    let text = "";
    const segments = [...this._tokenizer._segments(ids, this._skip)];
    segments.forEach((seg, k) => {
      if (typeof seg === "string") text += seg;
      else if (seg.length) text += this._text.decode(this._bytes.decode(seg), { stream: true });
      // an added token follows: close the run as decode() does
      if (k < segments.length - 1 && typeof seg !== "string") text += this._endRun();
    });
    return text;
  }

  flush() {
    return this._endRun();
  }
}
