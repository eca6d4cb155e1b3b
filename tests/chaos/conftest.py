"""The chaos suite's figures (requests, 5xx, leaks, ledger rows against answers, loss per mode)
travel with each test's report (`user_properties`), so that under pytest-xdist the controller,
which runs no test, can print them: tests/conftest.py prints them at the end of pytest's output."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.support import FIGURES


@pytest.fixture(autouse=True)
def _report_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    start = len(FIGURES)
    yield
    request.node.user_properties.extend(("chaos_figure", line) for line in FIGURES[start:])
