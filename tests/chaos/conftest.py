"""The chaos suite prints its figures (requests, 5xx, leaks, ledger rows against answers, loss per
mode) at the end of pytest's output, whatever the verbosity. Under pytest-xdist each worker sends
its figures with the test's report (`user_properties`), and the controller prints them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.support import FIGURES, LONG

_SHOWN: list[str] = []


@pytest.fixture(autouse=True)
def _report_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    start = len(FIGURES)
    yield
    request.node.user_properties.extend(("chaos_figure", line) for line in FIGURES[start:])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _SHOWN.extend(value for key, value in report.user_properties if key == "chaos_figure")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SHOWN:
        terminalreporter.write_sep("=", f"chaos figures ({'long' if LONG else 'CI'} mode; ROUTER_CHAOS=long for more)")
        for line in _SHOWN:
            terminalreporter.write_line(line)
