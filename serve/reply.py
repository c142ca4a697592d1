"""The response of one request, built from its choices: SSE chunks while streaming, or one JSON body.

    reply = Reply(server, body, chat, choices, echo, rid)
    for chunk in reply.chunks(index, batch): ...     # batch: token-id lists, then None when the choice ends
    reply.feed(index, batch); reply.body()           # non-streaming
"""
from __future__ import annotations

import time
from typing import Any

from serve.choices import Choice, Delta, chat_logprobs, completion_logprobs


class Reply:
    def __init__(self, server, body, chat: bool, choices: list[Choice], echo: str, rid: str) -> None:
        self.server, self.request, self.chat, self.choices, self.echo = server, body, chat, choices, echo
        self.base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": int(time.time()), "model": server.model_name}
        options = body.stream_options
        self.include_usage = bool(options and (options.include_usage or options.continuous_usage_stats))
        self.continuous = bool(options and options.continuous_usage_stats)
        self.finished: set[int] = set()
        self._started: set[int] = set()
        self._text: dict[int, list[str]] = {c.index: [] for c in choices}
        self._num_chars: dict[int, int] = {c.index: 0 for c in choices}  # text_offset of the next token

    @property
    def num_finished(self) -> int:
        return len(self.finished)

    # ---- streaming ------------------------------------------------------------------------------------
    def chunks(self, index: int, batch: list) -> list[dict]:
        """One chunk per token; the choice's finish_reason rides on its last one (or a stop string's)."""
        choice, out = self.choices[index], []
        if index in self.finished:
            return out
        tokens = [t for ids in batch if ids is not None for t in ids]
        ends = None in batch
        for i, t in enumerate(tokens):
            delta = choice.feed([t])
            last = choice.stopped or (ends and i == len(tokens) - 1)
            if last:
                delta = _join(delta, choice.close())
            out.append(self._chunk(choice, delta, choice.finish_reason if last else None))
            if choice.stopped:
                break
        if (ends or choice.stopped) and index not in self.finished:
            if not tokens or not out:
                out.append(self._chunk(choice, choice.close(), choice.finish_reason))
            self.finished.add(index)
        return out

    def _chunk(self, choice: Choice, delta: Delta, finish: str | None) -> dict:
        text = delta.text
        first = choice.index not in self._started
        self._started.add(choice.index)
        if first and self.echo:
            text = self.echo + text
        item: dict[str, Any] = {"index": choice.index, "finish_reason": finish}
        if self.chat:
            item["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
        else:
            item["text"] = text
        if first:
            self._num_chars[choice.index] = len(self.echo)
        offset = self._num_chars[choice.index]  # text_offset counts decoded token pieces, as the one body does
        if delta.logprobs:
            self._num_chars[choice.index] += sum(len(self.server.tok.decode([t])) for t in delta.token_ids)
        item["logprobs"] = self._logprobs(delta.token_ids, delta.logprobs, offset) if delta.logprobs else None
        if self.request.return_token_ids:
            item["token_ids"] = delta.token_ids
            if first:
                item["prompt_token_ids"] = choice.sub.prompt_ids
        chunk = {**self.base, "choices": [item]}
        if self.continuous:
            chunk["usage"] = self.usage()
        return chunk

    def usage_chunk(self) -> dict:
        return {**self.base, "choices": [], "usage": self.usage()}

    # ---- one body -------------------------------------------------------------------------------------
    def feed(self, index: int, batch: list) -> None:
        choice = self.choices[index]
        for ids in batch:
            if ids is not None:
                self._text[index].append(choice.feed(ids).text)
        if None in batch:
            self._text[index].append(choice.close().text)

    def body(self) -> dict:
        items = []
        for choice in self.choices:
            text = "".join(self._text[choice.index])
            item: dict[str, Any] = {"index": choice.index, "finish_reason": choice.finish_reason}
            logprobs = self._logprobs(choice.token_ids, choice.logprobs, len(self.echo)) if choice.logprobs else None
            if self.chat:
                item.update(message={"role": "assistant", "content": text}, logprobs=logprobs)
            else:
                item.update(text=self.echo + text, logprobs=logprobs)
            if self.request.return_token_ids:
                item.update(token_ids=choice.token_ids, prompt_token_ids=choice.sub.prompt_ids)
            items.append(item)
        return {**self.base, "object": "chat.completion" if self.chat else "text_completion", "choices": items,
                "usage": self.usage()}

    def usage(self) -> dict:
        prompt = len(self.choices[0].sub.prompt_ids)
        completion = sum(len(c.token_ids) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(c.sub.cached_tokens for c in self.choices)}}

    def _logprobs(self, token_ids: list[int], entries: list, text_offset: int) -> dict:
        pairs = list(zip(token_ids, entries))
        if self.chat:
            return chat_logprobs(self.server.tok, pairs)
        return completion_logprobs(self.server.tok, pairs, text_offset)


def _join(a: Delta, b: Delta) -> Delta:
    return Delta(a.text + b.text, a.token_ids + b.token_ids, a.logprobs + b.logprobs)
