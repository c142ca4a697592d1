"""One choice of a response as the client sees it: text deltas, stop strings, token ids, logprobs, usage.

    choice = Choice(0, sub, tokenizer, stop=["\\n\\n"], include_stop=False)
    delta = choice.feed(token_ids)        # Delta(text, token_ids, logprobs); may call aengine.finish on a stop
    delta = choice.close()                # what was held back, once the submission is done

Stop strings end the text where they begin (or after them with `include_stop_str_in_output`); text that may
be the start of a stop string is held back until it is not. The engine is told to stop (`AsyncEngine.finish`)
and tokens that arrive after the stop are dropped, so `completion_tokens` counts the tokens the client got.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from executor.tokenizer import IncrementalDetokenizer, Tokenizer


class Delta(NamedTuple):
    text: str
    token_ids: list[int]
    logprobs: list  # (chosen logprob, [(id, logprob)]) per token


class Choice:
    def __init__(self, index: int, sub, tokenizer: Tokenizer, aengine, stop: Sequence[str] = (),
                 include_stop: bool = False) -> None:
        self.index, self.sub, self.tok, self.aengine = index, sub, tokenizer, aengine
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stop, self.include_stop = [s for s in stop if s], include_stop
        self.text = ""  # everything decoded so far (sent + held back)
        self.num_sent_chars = 0
        self.token_ids: list[int] = []
        self.logprobs: list = []
        self.stopped = False  # by a stop string

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped or self.sub.finish_reason == "stop" else "length"

    def feed(self, ids: Sequence[int]) -> Delta:
        if self.stopped:
            return Delta("", [], [])
        start = len(self.token_ids)
        self.token_ids.extend(ids)
        lps = self.sub.logprobs[start:start + len(ids)]
        self.logprobs.extend(lps)
        self.text += self.detok.add(list(ids))
        return Delta(self._release(final=False), list(ids), list(lps))

    def close(self) -> Delta:
        if not self.stopped:
            self.text += self.detok.flush()
        return Delta(self._release(final=True), [], [])

    def _release(self, final: bool) -> str:
        """Text newly safe to send: up to a stop string, else all but a possible stop-string prefix."""
        if self.stop and not self.stopped:
            search_from = max(0, self.num_sent_chars - max(len(s) for s in self.stop))
            hits = [(i, s) for s in self.stop if (i := self.text.find(s, search_from)) >= 0]
            if hits:
                at, s = min(hits)
                self.text = self.text[:at + len(s) if self.include_stop else at]
                self.stopped = True
                self.aengine.finish(self.sub.request_id)
                final = True
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        out = self.text[self.num_sent_chars:end]
        self.num_sent_chars = max(self.num_sent_chars, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(max((len(s) for s in self.stop), default=1) - 1, len(self.text)), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stop):
                return n
        return 0

    def usage(self) -> tuple[int, int]:
        return len(self.sub.prompt_ids), len(self.token_ids)


def completion_logprobs(tok: Tokenizer, entries: list, text_offset: int = 0) -> dict[str, Any]:
    """The completions API's logprobs object for (chosen logprob, top) entries of the given tokens."""
    tokens, token_lps, tops, offsets = [], [], [], []
    for token_id, (chosen, top) in entries:
        piece = tok.decode([token_id])
        offsets.append(text_offset)
        text_offset += len(piece)
        tokens.append(piece)
        token_lps.append(chosen)
        alternatives: dict[str, float] = {}
        for i, lp in top:  # most likely first; ids that decode to the same text keep the first
            alternatives.setdefault(tok.decode([i]), lp)
        tops.append(alternatives)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tok: Tokenizer, entries: list) -> dict[str, Any]:
    """The chat API's logprobs object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def item(token_id: int, lp: float) -> dict:
        piece = tok.decode([token_id])
        return {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8", "replace"))}
    return {"content": [{**item(t, chosen), "top_logprobs": [item(i, lp) for i, lp in top]}
                        for t, (chosen, top) in entries]}
