"""Binder answers exactly as inspect.Signature.bind does, for every kind of signature."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chervil.binding import Binder


def f0() -> None: ...
def f1(a: int) -> None: ...
def f2(a: int, b: str = "x") -> None: ...
def f3(a: int, b: str, c: float = 0.0, *, d: int, e: int = 1) -> None: ...
def f4(a: int, /, b: int, *args: Any, k: int = 0, **kw: Any) -> None: ...
def f5(*, only: int) -> None: ...
def f6(a: int = 1, b: int = 2) -> None: ...


FUNCS = [f0, f1, f2, f3, f4, f5, f6]
NAMES = ["a", "b", "c", "d", "e", "k", "only", "zz"]


def binds(sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(fn=st.sampled_from(FUNCS), n=st.integers(0, 5),
       names=st.sets(st.sampled_from(NAMES), max_size=4))
def test_binder_agrees_with_bind(fn: Any, n: int, names: set[str]) -> None:
    sig = inspect.signature(fn)
    args, kwargs = tuple(range(n)), dict.fromkeys(names, 0)
    assert Binder(sig).binds(args, kwargs) == binds(sig, args, kwargs)


def test_check_raises_binds_own_error() -> None:
    with pytest.raises(TypeError, match="missing a required argument: 'd'"):
        Binder(inspect.signature(f3)).check((1, "x"), {})
    Binder(inspect.signature(f3)).check((1, "x"), {"d": 4})  # binds: no error
