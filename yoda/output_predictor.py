"""Output-length prediction: what a server may know of a request's output before it ends.

No server knows how many tokens a request will generate. Policies that plan with it (the SLO-aware
dispatcher's KV need) ask this predictor: the mean output of the session's earlier turns where it has any,
else the running mean over every finished request, else a default. It learns only from requests that
ended. `oracle=True` returns the true length: the named ablation that shows what the oracle was worth.
Only the backend (the simulator's end-of-sequence, the executor's stop condition) reads the true length.
"""
from __future__ import annotations

from yoda.request import Request

DEFAULT_OUTPUT_LEN = 256  # before anything has finished (vLLM bench's default --random-output-len is 128-256)


class OutputLenPredictor:
    def __init__(self, oracle: bool = False, default_len: int = DEFAULT_OUTPUT_LEN) -> None:
        if default_len < 1:
            raise ValueError(f"default output length must be >= 1, got {default_len}")
        self.oracle = oracle
        self.default_len = default_len
        self._sessions: dict[str, tuple[int, int]] = {}  # session -> (sum of outputs, turns finished)
        self._total, self._count = 0, 0

    def predict(self, request: Request) -> int:
        """Predicted output tokens of `request`. Does not modify the predictor."""
        if self.oracle:
            return request.output_len
        if request.session_id is not None and request.session_id in self._sessions:
            total, count = self._sessions[request.session_id]
            return max(1, round(total / count))
        return max(1, round(self._total / self._count)) if self._count else self.default_len

    def observe(self, request: Request, output_len: int) -> None:
        """Learn from a request that ended after `output_len` tokens."""
        self._total += output_len
        self._count += 1
        if request.session_id is not None:
            total, count = self._sessions.get(request.session_id, (0, 0))
            self._sessions[request.session_id] = (total + output_len, count + 1)
