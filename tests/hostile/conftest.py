"""The hostile suite's report: how many hostile inputs were tried, printed at the end of every run."""

from __future__ import annotations

from typing import Any

from hostile_kit import FUZZ_EXAMPLES, tally


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not tally:
        return
    write = terminalreporter.write_line
    terminalreporter.section("hostile inputs")
    for target, count in sorted(tally.items()):
        write(f"{count:>9,}  {target}")
    write(f"{sum(tally.values()):>9,}  in all (LOGONMESH_FUZZ_EXAMPLES={FUZZ_EXAMPLES})")
