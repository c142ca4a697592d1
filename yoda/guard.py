"""Contention guard: worst-case slowdown of one lane while the other runs, over a coarse grid.

Cells are keyed by (partition SMs of the guarded lane, prefill new tokens, prefill reused tokens, decode
batch, decode context per request), each rounded UP to the grid, so a lookup is conservative.

Online refinement rule: after a launch ran beside the other lane, `observe(cell, ratio)` with the measured
slowdown ratio (observed / solo estimate). A ratio above the cell's guard raises it to the ratio at once
(never be optimistic twice); a lower ratio pulls the guard down slowly, by `decay` of the gap per
observation, and never below the largest ratio seen in the last `window` observations of that cell.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

PREFILL_TOKENS_GRID = (2048, 8192, 32768, 131072)
REUSED_TOKENS_GRID = (0, 2048, 8192, 32768, 131072)
BATCH_GRID = (1, 8, 16, 32, 64, 128, 256)
CONTEXT_GRID = (1024, 4096, 16384, 65536)


def _bucket(grid: tuple[int, ...], value: float) -> int:
    i = bisect.bisect_left(grid, value)
    return grid[min(i, len(grid) - 1)]


Cell = tuple[int, int, int, int, int]


@dataclass
class GuardTable:
    factors: dict[Cell, float] = field(default_factory=dict)
    default: float = 1.3  # the worst case the paper measured on H100
    decay: float = 0.02
    window: int = 32
    _recent: dict[Cell, deque] = field(default_factory=dict)

    @staticmethod
    def cell(num_sms: int, prefill_new: float, prefill_reused: float, batch: float, ctx_per_req: float) -> Cell:
        return (num_sms, _bucket(PREFILL_TOKENS_GRID, prefill_new), _bucket(REUSED_TOKENS_GRID, prefill_reused),
                _bucket(BATCH_GRID, batch), _bucket(CONTEXT_GRID, ctx_per_req))

    def factor(self, num_sms: int, prefill_new: float, prefill_reused: float, batch: float, ctx: float) -> float:
        return self.factors.get(self.cell(num_sms, prefill_new, prefill_reused, batch, ctx), self.default)

    def set_worst(self, cell: Cell, slowdown: float) -> None:
        self.factors[cell] = max(self.factors.get(cell, 1.0), slowdown)

    def observe(self, cell: Cell, ratio: float) -> None:
        recent = self._recent.setdefault(cell, deque(maxlen=self.window))
        recent.append(ratio)
        current = self.factors.get(cell, self.default)
        if ratio >= current:
            self.factors[cell] = ratio
        else:
            self.factors[cell] = max(current - self.decay * (current - ratio), max(recent), 1.0)

    def copy(self) -> "GuardTable":
        """An independent table (online refinement of one must not leak into the other)."""
        return GuardTable(dict(self.factors), self.default, self.decay, self.window,
                          {cell: deque(q, maxlen=q.maxlen) for cell, q in self._recent.items()})

    @property
    def worst(self) -> float:
        return max(self.factors.values(), default=self.default)
