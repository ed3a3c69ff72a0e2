"""Masking of ``sensitive`` arguments: every output (CLI, logs, errors, dashboard) uses it."""

from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any

MASK = "***"


def redact_call(signature: inspect.Signature | None, sensitive: Collection[str],
                args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Copies of ``args``/``kwargs`` with the sensitive parameters masked.

    Positional arguments are matched to parameter names through the signature; without
    one (task unknown here) every positional argument is masked when any is sensitive.
    """
    if not sensitive:
        return list(args), dict(kwargs)
    out_kwargs = {k: (MASK if k in sensitive else v) for k, v in kwargs.items()}
    if signature is None:
        return [MASK] * len(args), out_kwargs
    names = [p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = next((p.name for p in signature.parameters.values()
                    if p.kind is p.VAR_POSITIONAL), None)
    out_args = []
    for i, value in enumerate(args):
        name = names[i] if i < len(names) else varargs
        out_args.append(MASK if name in sensitive else value)
    return out_args, out_kwargs


def redact_text(text: str, values: Collection[Any]) -> str:
    """Remove the string forms of sensitive values from an error text or traceback."""
    for value in values:
        if value is None or isinstance(value, bool):
            continue
        s = str(value)
        if len(s) >= 3:
            text = text.replace(s, MASK)
    return text
