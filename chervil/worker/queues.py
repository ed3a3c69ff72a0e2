"""Which queues a worker listens to, and in what order: ``-Q a,b`` or ``-Q a:10,b:1``."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """Strict order (every weight None) or weighted (every weight a positive int)."""

    names: tuple[str, ...]
    weights: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> QueueSpec:
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise ConfigurationError("no queue named: give -Q like 'default' or 'high,low'")
        names, weights = [], []
        for item in items:
            name, _, weight = item.partition(":")
            if not name:
                raise ConfigurationError(f"queue spec {text!r} has an empty queue name")
            names.append(name)
            if weight:
                try:
                    w = int(weight)
                except ValueError:
                    w = 0
                if w <= 0:
                    raise ConfigurationError(
                        f"queue weight {item!r} must be a positive integer, like 'batch:1'")
                weights.append(w)
        if len(set(names)) != len(names):
            raise ConfigurationError(f"queue spec {text!r} names a queue twice")
        if weights and len(weights) != len(names):
            raise ConfigurationError(
                f"queue spec {text!r} mixes weighted and plain queues; weight all or none")
        return cls(tuple(names), tuple(weights) if weights else None)

    def order(self, rng: random.Random | None = None) -> list[str]:
        """The order to reserve in now: fixed, or drawn by weight (no queue ever starves)."""
        if self.weights is None:
            return list(self.names)
        rng = rng or random.Random()
        pool = list(zip(self.names, self.weights, strict=True))
        out = []
        while pool:
            pick = rng.choices(range(len(pool)), weights=[w for _, w in pool])[0]
            out.append(pool.pop(pick)[0])
        return out

    def __str__(self) -> str:
        if self.weights is None:
            return ",".join(self.names)
        return ",".join(f"{n}:{w}" for n, w in zip(self.names, self.weights, strict=True))
