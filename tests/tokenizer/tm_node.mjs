// Test driver for src/stentor/infer/web/tokenmonster.js: one JSON request on stdin, one JSON
// answer on stdout, so a single node process runs thousands of cases.
//
// Request: {"vocab": path, "tables": path or null, "tokenizer_config": object or null,
//   "encode": [b64], "encode_text": [str], "prepare": [b64], "decode": [[ids]],
//   "stream": [[[ids], ...]], "load": [b64 .vocab images],
//   "tok_encode": [[text, add_special]], "tok_decode": [[ids, skip]], "tok_stream": [[[[ids], ...], skip]],
//   "tok_pieces": [id], "bench": {"text": str, "repeat": n}}   (every key but "vocab" optional)
// Answer: the same keys with one result per case: ids, bytes as b64, decoder output per chunk
// (flush last), the error message of a rejected .vocab image (null when it loads), the
// tokenizer's special ids under "tok_info", and milliseconds per encode under "bench".
import { readFileSync } from "node:fs";

import { StentorTokenizer, Vocab, setUnicodeTables } from "../../src/stentor/infer/web/tokenmonster.js";

const request = JSON.parse(readFileSync(0, "utf8"));
const bytes = (b64) => new Uint8Array(Buffer.from(b64, "base64"));
const b64 = (data) => Buffer.from(data).toString("base64");
const answer = {};

if (request.tables) setUnicodeTables(JSON.parse(readFileSync(request.tables, "utf8")));
const vocab = Vocab.fromBytes(new Uint8Array(readFileSync(request.vocab)), request.vocab);

const cases = (key, fn) => {
  if (request[key]) answer[key] = request[key].map(fn);
};
cases("encode", (data) => vocab.encode(bytes(data)));
cases("encode_text", (text) => vocab.encode(text));
cases("prepare", (data) => b64(vocab.prepare(bytes(data))));
cases("decode", (ids) => b64(vocab.decode(ids)));
cases("stream", (chunks) => {
  const dec = vocab.decoder();
  return [...chunks.map((ids) => b64(dec.decode(ids))), b64(dec.flush())];
});
cases("load", (image) => {
  try {
    Vocab.fromBytes(bytes(image), "case");
    return null;
  } catch (err) {
    return err.message;
  }
});

if (request.tokenizer_config) {
  const tok = StentorTokenizer.fromConfig(vocab, request.tokenizer_config);
  answer.tok_info = { bos: tok.bosTokenId, eos: tok.eosTokenId, pad: tok.padTokenId, special: tok.allSpecialIds };
  cases("tok_encode", ([text, addSpecial]) => tok.encode(text, addSpecial));
  cases("tok_decode", ([ids, skip]) => tok.decode(ids, skip));
  cases("tok_stream", ([chunks, skip]) => {
    const dec = tok.streamingDecoder(skip);
    return [...chunks.map((ids) => dec.push(ids)), dec.flush()];
  });
  cases("tok_pieces", (id) => tok.tokenPiece(id));
}

if (request.bench) {
  const { text, repeat } = request.bench;
  vocab.encode(text); // the first call builds the trie
  const start = performance.now();
  for (let k = 0; k < repeat; k++) vocab.encode(text);
  answer.bench = (performance.now() - start) / repeat;
}

process.stdout.write(JSON.stringify(answer));
