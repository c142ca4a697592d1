"""Tokenizers for the server: a local transformers tokenizer, or a byte-level fallback (never downloads).

    tok = load_tokenizer("/models/llama3", vocab_size=128256)   # AutoTokenizer(local_files_only=True)
    tok = load_tokenizer(None, vocab_size=512)                    # ByteTokenizer
    ids = tok.encode("hello"); text = tok.decode(ids); ids = tok.chat_prompt(messages)

Byte-level fallback (random-weight models have no tokenizer):
- encode: UTF-8 bytes, byte b -> id (b + BYTE_OFFSET) % vocab_size. No BOS is added.
- decode: id -> byte (id - BYTE_OFFSET) % vocab_size when that is < 256; other ids are dropped from the
  text (a random model emits them freely). Invalid UTF-8 becomes U+FFFD.
- chat template: each message as "<|ROLE|>\\nCONTENT\\n" (ROLE the message's role), then "<|assistant|>\\n".
- no EOS: requests run to max_tokens unless the tokenizer was given `eos_token_id`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

BYTE_OFFSET = 3  # ids 0..2 stay free (pad, bos, eos in most vocabularies)


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_id: int | None
    name: str

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens skipped."""

    def chat_prompt(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a chat (list of {role, content: str}) ending with the assistant's turn."""


def token_block_hashes(token_ids: Sequence[int], block_size: int) -> tuple[int, ...]:
    """Prefix-chained hash of every full `block_size`-token block: equal prefixes give equal hashes
    (Python hashes tuples of ints the same way in every process)."""
    out, h = [], 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash((h, tuple(token_ids[start:start + block_size])))
        out.append(h)
    return tuple(out)


def fallback_chat_text(messages: Sequence[dict]) -> str:
    """The documented plain chat template (also used by the router to hash chat prompts)."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


class ByteTokenizer:
    name = "bytes"

    def __init__(self, vocab_size: int, eos_token_id: int | None = None) -> None:
        if vocab_size < 2:
            raise ValueError(f"byte tokenizer needs vocab_size >= 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        return [(b + BYTE_OFFSET) % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for i in ids:
            b = (i - BYTE_OFFSET) % self.vocab_size
            if b < 256 and i != self.eos_token_id:
                out.append(b)
        return out.decode("utf-8", errors="replace")

    def chat_prompt(self, messages: Sequence[dict]) -> list[int]:
        return self.encode(fallback_chat_text(messages))


class HFTokenizer:
    """A transformers tokenizer read from a local folder."""

    def __init__(self, path: str | Path, vocab_size: int) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.vocab_size = vocab_size
        self.eos_token_id = self.tok.eos_token_id
        self.name = str(path)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, messages: Sequence[dict]) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            out = self.tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return [int(i) for i in ids]
        return self.encode(fallback_chat_text(messages))


def load_tokenizer(path: str | Path | None, vocab_size: int) -> Tokenizer:
    if path is None:
        return ByteTokenizer(vocab_size)
    if not Path(path).exists():
        raise ValueError(f"tokenizer path {path} does not exist (tokenizers are read locally, never downloaded)")
    return HFTokenizer(path, vocab_size)


class IncrementalDetokenizer:
    """Text deltas of a growing id list without re-decoding everything (vLLM's prefix/read offsets):
    a delta is held back while it ends in an incomplete UTF-8 sequence (U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, new_ids: Sequence[int]) -> str:
        self.ids.extend(new_ids)
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever was held back (at the end of the request)."""
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]
