"""Chat conversations for supervised fine-tuning: the model learns the assistant's turns only.

A source holds one conversation per record, `{"messages": [{"role": ..., "content": ...}, ...]}` (the
field is the source's `text_field`, "messages" by default for chat). Each conversation becomes one
example, rendered with the tokenizer's chat template exactly as `stentor generate --chat` and the
server render a prompt. Its tokens are tokenized turn by turn: everything up to and including an
assistant turn's generation prompt is context (label -100), and the turn's content plus EOS is the
target. Examples are never packed together; a batch pads them, and the attention mask keeps each
one alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from stentor.data.packing import IGNORE_INDEX
from stentor.data.sources import SourceSpec, check_source, mixed_documents
from stentor.errors import StentorError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class ChatExamples(torch.utils.data.Dataset):
    """Tokenized conversations; item i is {"input_ids", "labels"} of conversation i (unpadded)."""

    ids: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.ids[i]), "labels": torch.from_numpy(self.labels[i])}

    def target_tokens(self) -> int:
        return int(sum((labels != IGNORE_INDEX).sum() for labels in self.labels))


def _check(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise StentorError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise StentorError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string content, got {str(m)[:80]}")
    if not any(m["role"] == "assistant" for m in messages):
        raise StentorError(f"{where}: no assistant turn, so nothing to learn; drop it or add the reply")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_conversation(tokenizer, messages: list[dict], where: str = "a conversation") -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are the assistant turns' tokens and EOS, -100 elsewhere."""
    render = lambda ms, prompt: tokenizer.apply_chat_template(ms, add_generation_prompt=prompt, tokenize=False)  # noqa: E731
    encode = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []  # noqa: E731
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the conversation's text tokenized so far
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = render(messages[:k], True)
        after = render(messages[: k + 1], False)
        if not context.startswith(done) or not after.startswith(context + message["content"]):
            raise StentorError(f"{where}: the chat template does not render the conversation turn by turn, "
                               "which fine-tuning on assistant turns needs; use the card's template")  # fmt: skip
        head, reply = encode(context[len(done) :]), encode(message["content"]) + [eos]
        ids += head + reply
        labels += [IGNORE_INDEX] * len(head) + reply
        done = context + message["content"]
    return ids, labels


def load_chat(sources: list[SourceSpec], tokenizer, val_docs: int, block_size: int, seed: int) -> tuple[ChatExamples, ChatExamples]:
    """The conversations of `sources` (mixed as for pretraining), the first `val_docs` held out."""
    if not getattr(tokenizer, "chat_template", None):
        raise StentorError("the tokenizer has no chat template; fine-tuning on chat needs one (the card's comes with "
                           "every stentor tokenizer)")  # fmt: skip
    for spec in sources:
        check_source(spec)
    val, train = ChatExamples([], []), ChatExamples([], [])
    cut = empty = 0
    for n, messages in enumerate(mixed_documents(sources, seed)):
        ids, labels = encode_conversation(tokenizer, _check(messages, f"conversation {n + 1}"), f"conversation {n + 1}")
        if len(ids) > block_size:
            cut += 1
            ids, labels = ids[:block_size], labels[:block_size]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                empty += 1  # its first reply begins past block_size: nothing of it would be learned
                continue
        split = val if n < val_docs else train
        split.ids.append(np.asarray(ids, dtype=np.int64))
        split.labels.append(np.asarray(labels, dtype=np.int64))
    if cut:
        log.warning("%d conversations were longer than block_size %d and were cut to it (%d of them dropped: no "
                    "reply left); raise batch.block_size to keep them whole", cut, block_size, empty)  # fmt: skip
    if not len(train):
        raise StentorError(f"no training conversations left after the {val_docs} held out; add data or lower data.val_docs")
    return train, val
