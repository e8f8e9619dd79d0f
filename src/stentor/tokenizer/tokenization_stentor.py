"""StentorTokenizer: a Hugging Face (Python-backend) tokenizer over a TokenMonster vocabulary.

This file is deliberately self-contained: it imports only `.tokenmonster` (copied beside it),
transformers, numpy and the standard library. `save_pretrained` copies both files into the
output directory, so `AutoTokenizer.from_pretrained(dir, trust_remote_code=True)` works
where stentor is not installed.

Id layout (docs/decisions.md, "Special tokens"): ids 0..V-1 are the TokenMonster ids
(V = the vocabulary's id-table size), `</s>` (EOS, also PAD) = V, `<s>` (BOS) = V + 1, then
`<reserved_0>`, `<reserved_1>`, ... up to the next multiple of 128 (8,000 -> 8,064).

Token strings (`convert_ids_to_tokens`): TokenMonster tokens are raw bytes, so a token is
shown as its bytes decoded as UTF-8 where that gives a printable character, a backslash as
`\\\\`, and every other byte (control bytes, the capcode delete marker 0x7F, invalid UTF-8)
as `\\xHH`. The mapping is reversible (`str_to_token_bytes`). A token whose printable form
would read like one of our special names gets its first byte escaped, so names stay unique.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AddedToken, PreTrainedTokenizer

from .codec import StreamingDecoder, special_splitter, split_segments, split_text, text_to_bytes, write_checksums
from .tokenmonster import Vocab

CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% endif %}"
)
VOCAB_FILE = "tokenizer.vocab"
EOS, BOS, UNK = "</s>", "<s>", "<unk>"


def padded_size(base_vocab: int, multiple: int = 128) -> int:
    """Base vocabulary + EOS + BOS, rounded up to a multiple (same formula as stentor.model.presets)."""
    return -(-(base_vocab + 2) // multiple) * multiple


def token_bytes_to_str(data: bytes) -> str:
    """Printable, reversible name of a raw token (see the module docstring)."""
    out = []
    for ch in data.decode("utf-8", errors="surrogateescape"):
        if "\udc80" <= ch <= "\udcff":  # an invalid byte, smuggled through by surrogateescape
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def str_to_token_bytes(name: str) -> bytes:
    """Inverse of `token_bytes_to_str`."""
    out = bytearray()
    i = 0
    while i < len(name):
        if name.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif name.startswith("\\x", i) and len(name) >= i + 4:
            out.append(int(name[i + 2 : i + 4], 16))
            i += 4
        else:
            out += name[i].encode("utf-8")
            i += 1
    return bytes(out)


class StentorTokenizer(PreTrainedTokenizer):
    """Stentor2's tokenizer: TokenMonster ids, then `</s>`, `<s>` and reserved padding tokens."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        pad_to_multiple: int = 128,
        special_ids: dict | None = None,
        **kwargs,
    ) -> None:
        vocab = kwargs.pop("_vocab", None)  # from_vocab(Vocab): kept out of init_kwargs (not JSON)
        if vocab is None:
            if vocab_file is None:
                raise ValueError("StentorTokenizer needs a TokenMonster vocabulary: pass vocab_file=PATH.vocab")
            vocab = Vocab.load(vocab_file)
        self.vocab = vocab
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.pad_to_multiple = pad_to_multiple

        self.special_ids = special_ids
        base = vocab.id_table_size
        has_unk = vocab.unk_id is not None
        if special_ids:  # a checkpoint's own layout (stentor.tokenizer.foreign): its ids, nothing reserved
            specials = {int(i): str(name) for i, name in special_ids.items()}
            reserved = []
        else:  # ours: EOS, BOS, then reserved tokens up to a multiple of pad_to_multiple
            reserved = [f"<reserved_{k}>" for k in range(padded_size(base, pad_to_multiple) - base - 2)]
            specials = {base: EOS, base + 1: BOS, **{base + 2 + k: name for k, name in enumerate(reserved)}}
        if has_unk and vocab.unk_id not in specials and UNK not in specials.values():
            specials[vocab.unk_id] = UNK
        self._build_names(specials)
        self._added_tokens_decoder = {
            i: AddedToken(name, special=True, normalized=False, lstrip=False, rstrip=False)
            for i, name in sorted(specials.items())
        }
        kwargs.setdefault("bos_token", BOS)
        kwargs.setdefault("eos_token", EOS)
        kwargs.setdefault("pad_token", EOS)  # pad = EOS, as on the card
        kwargs.setdefault("unk_token", UNK if has_unk else None)
        kwargs.setdefault("extra_special_tokens", reserved)
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        if special_ids:
            kwargs["special_ids"] = {str(i): name for i, name in sorted(specials.items())}  # JSON keys are strings
        super().__init__(
            vocab_file=vocab_file,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            pad_to_multiple=pad_to_multiple,
            **kwargs,
        )

    def _build_names(self, specials: dict[int, str]) -> None:
        """One unique printable name per TokenMonster id (readable base form, not the capcode variant)."""
        raw: dict[int, bytes] = {}
        for token_id in range(self.vocab.id_table_size):
            raw[token_id] = self.vocab.id_to_token(token_id) or b""
        for info in self.vocab.tokens():  # the plain tokens (no delete-marker variants); UNK has no bytes
            if info.token:
                raw[info.id] = info.token
        fixed = dict(specials)
        fixed.update({i: f"<unused_{i}>" for i, data in raw.items() if not data and i not in specials})  # id gaps
        reserved_names = set(fixed.values())
        names: list[str] = []
        for token_id in range(self.vocab.id_table_size):
            if token_id in fixed:
                names.append(fixed[token_id])
                continue
            data = raw[token_id]
            name = token_bytes_to_str(data)
            if name in reserved_names:
                name = f"\\x{data[0]:02x}" + token_bytes_to_str(data[1:])
            names.append(name)
        self._id_to_name = names
        self._name_to_id = {name: i for i, name in enumerate(names)}
        if len(self._name_to_id) != len(names):
            raise ValueError("TokenMonster vocabulary has two ids with the same token bytes; it cannot be mapped 1:1")

    @classmethod
    def from_vocab(cls, vocab: str | os.PathLike | Vocab, **kwargs) -> StentorTokenizer:
        """Build the tokenizer from a `.vocab` path or a loaded `Vocab`."""
        if isinstance(vocab, Vocab):
            return cls(vocab_file=None, _vocab=vocab, **kwargs)
        return cls(vocab_file=str(vocab), **kwargs)

    # --- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """TokenMonster ids only (V); `len(tokenizer)` adds EOS, BOS and the reserved tokens."""
        return self.vocab.id_table_size

    def get_vocab(self) -> dict[str, int]:
        names = dict(self._name_to_id)
        names.update(self._added_tokens_encoder)
        return names

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """transformers' tokenize, with the added tokens found by one regex instead of its per-character trie
        (which cost ~0.4 s per MB of text); tokens with lstrip/rstrip/single_word take transformers' path."""
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        tokens = self._added_tokens_decoder.values()
        if split_special_tokens or any(t.lstrip or t.rstrip or t.single_word for t in tokens):
            return super().tokenize(text, split_special_tokens=split_special_tokens, **kwargs)
        text, kwargs = self.prepare_for_tokenization(text, **kwargs)
        out: list[str] = []
        for special, part in split_text(self._added_tables()[1], text):
            out.extend([part] if special else self._tokenize(part))
        return out

    def encode_many(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`self(texts, add_special_tokens=...).input_ids`, without transformers' per-text machinery (~50 us a
        text: most of the cost of short texts such as BLiMP's sentences). The scorers call this."""
        tokens = self._added_tokens_decoder.values()
        if self.split_special_tokens or any(t.lstrip or t.rstrip or t.single_word for t in tokens):
            return self(list(texts), add_special_tokens=add_special_tokens).input_ids
        lookup, splitter = self._added_tables()
        plain: list[bytes] = []  # every text's pieces between added tokens, tokenized in one batch
        layout = []  # per text: an added token's id, or -1 for its next plain piece
        for text in texts:
            row = []
            for special, part in split_text(splitter, self.prepare_for_tokenization(text)[0]):
                if special:
                    row.append(lookup[part])
                else:
                    row.append(-1)
                    plain.append(text_to_bytes(part))
            layout.append(row)
        pieces = iter(self.vocab.encode_many(plain))
        out = []
        for row in layout:
            ids: list[int] = []
            for item in row:
                if item < 0:
                    ids.extend(next(pieces))
                else:
                    ids.append(item)
            out.append(self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids)
        return out

    def _added_tables(self):
        """(name -> id with added tokens first, the added-token splitter), rebuilt when tokens are added."""
        if getattr(self, "_tables_source", None) != self._added_tokens_encoder:
            self._tables_source = dict(self._added_tokens_encoder)
            self._tables = ({**self._name_to_id, **self._added_tokens_encoder},
                            special_splitter(self._added_tokens_encoder))
        return self._tables

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self._id_to_name[i] for i in self.vocab.encode(text_to_bytes(text))]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Ids of token names: one look-up per token in a table of names and added tokens (added first,
        as transformers resolves them), instead of two method calls per token."""
        if isinstance(tokens, str):
            return super().convert_tokens_to_ids(tokens)
        lookup = self._added_tables()[0]
        ids = [lookup.get(token) for token in tokens]
        if None in ids:  # unknown names: <unk> or the KeyError of _convert_token_to_id
            ids = [i if i is not None else self._convert_token_to_id(t) for i, t in zip(ids, tokens)]
        return ids

    def _convert_token_to_id(self, token: str) -> int:
        token_id = self._name_to_id.get(token)
        if token_id is None:
            token_id = self.unk_token_id
            if token_id is None:
                raise KeyError(f"{token!r} is not a token of this vocabulary (and it has no <unk>)")
        return token_id

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < len(self._id_to_name):
            raise IndexError(f"token id {index} is outside the vocabulary (0..{len(self) - 1})")
        return self._id_to_name[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode_ids([self._convert_token_to_id_with_added_voc(t) for t in tokens], False)

    # --- special tokens (Llama convention: <s> text [</s>]) ------------------------------------

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    # --- decoding -----------------------------------------------------------------------------

    def _segments(self, ids: Iterable[int], skip_special_tokens: bool):
        """Runs of TokenMonster ids and the text of the added tokens between them (see codec.split_segments)."""
        return split_segments(ids, self.vocab.id_table_size, self._added_tokens_decoder, skip_special_tokens)

    def _decode_ids(self, ids: Iterable[int], skip_special_tokens: bool) -> str:
        parts = []
        for seg in self._segments(ids, skip_special_tokens):
            parts.append(seg if isinstance(seg, str) else self.vocab.decode(seg).decode("utf-8", errors="replace"))
        return "".join(parts)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self._decode_ids(token_ids, skip_special_tokens)

    def streaming_decoder(self, skip_special_tokens: bool = True) -> StreamingDecoder:
        """A decoder for generation: push ids as they come, get text that is safe to print."""
        return StreamingDecoder(self, skip_special_tokens)

    # --- saving -------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        path.write_bytes(self.vocab.to_bytes())
        return (str(path),)

    def save_pretrained(self, save_directory, *args, **kwargs) -> tuple[str, ...]:
        files = super().save_pretrained(save_directory, *args, **kwargs)
        # transformers 5 drops add_bos_token/add_eos_token from the saved config; keep ours.
        config_path = Path(save_directory) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update(add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token)
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        special_map = Path(save_directory) / "special_tokens_map.json"
        special_map.write_text(json.dumps(self.special_tokens_map, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return (*files, str(special_map), str(write_checksums(save_directory)))


StentorTokenizer.register_for_auto_class("AutoTokenizer")
