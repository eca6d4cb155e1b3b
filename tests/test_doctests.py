"""Every docstring example in the package runs (those that need a network or a file say +SKIP)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import router

MODULES = sorted(m.name for m in pkgutil.walk_packages(router.__path__, "router.") if not m.name.endswith("_features"))


def test_every_module_is_found() -> None:
    assert {"router.core.sse", "router.core.retry", "router.engine.engine", "router.server.proxy"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"
