"""The chaos suite prints its figures (requests, 5xx, leaks, ledger rows against answers, loss per
mode) at the end of pytest's output, whatever the verbosity."""

from __future__ import annotations

from typing import Any

from tests.chaos.support import FIGURES, LONG


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("=", f"chaos figures ({'long' if LONG else 'CI'} mode; ROUTER_CHAOS=long for more)")
        for line in FIGURES:
            terminalreporter.write_line(line)
