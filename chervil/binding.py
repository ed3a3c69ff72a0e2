"""Whether a call binds to a task's parameters: checked at every enqueue and every run.

``inspect.Signature.bind`` costs several microseconds a call. For the signatures tasks
almost always have (parameters by position or keyword, and keyword-only ones, with or
without defaults) :class:`Binder` answers from tables made once; for the others (``*args``,
``**kwargs``, positional-only parameters) it asks ``bind``. A call that does not bind
gets ``bind``'s own ``TypeError`` (:meth:`Binder.check`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

_SIMPLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Binder:
    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        params = list(signature.parameters.values())
        self.simple = all(p.kind in _SIMPLE for p in params)
        positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        self.max_args = len(positional)
        self.index = {p.name: i for i, p in enumerate(positional)}
        self.names = frozenset(signature.parameters)
        self.required = [(p.name, self.index.get(p.name, -1)) for p in params
                         if p.default is inspect.Parameter.empty]
        # without keywords: enough positional arguments for every required parameter
        self.min_args = max((i + 1 for _, i in self.required if i >= 0), default=0)
        self.required_keyword_only = any(i < 0 for _, i in self.required)

    def binds(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
        if not self.simple:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError:
                return False
            return True
        n = len(args)
        if n > self.max_args:
            return False
        if not kwargs:
            return n >= self.min_args and not self.required_keyword_only
        for name in kwargs:
            i = self.index.get(name)
            if i is None:
                if name not in self.names:
                    return False
            elif i < n:
                return False  # given by position and by keyword
        return all(0 <= i < n or name in kwargs for name, i in self.required)

    def check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``bind``'s ``TypeError`` when the call does not bind."""
        if not self.binds(args, kwargs):
            self.signature.bind(*args, **kwargs)
