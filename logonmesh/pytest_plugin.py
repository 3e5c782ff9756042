"""The pytest plugin (entry point ``pytest11``): the ``local_cluster`` fixture.

pytest imports this module in every project that installs logonmesh, so it
imports nothing heavy and adds no hook until a test asks for a cluster: the
harness is imported by the fixture, and the hook that attaches every node's
logs to a failing test's report is registered by its first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, Iterator

import pytest

if TYPE_CHECKING:
    from pluggy import Result

_LOGS_PLUGIN = "logonmesh-node-logs"


class _NodeLogsOnFailure:
    """Appends the logs of every cluster a failed test used to its report."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: Any, call: Any) -> Generator[None, Result[Any], None]:
        outcome = yield
        report = outcome.get_result()
        if not report.failed:
            return
        from logonmesh.testing import LocalCluster
        # Any fixture that yields a LocalCluster (this plugin's, or a module-scoped one of a test file).
        clusters = {id(v): v for v in getattr(item, "funcargs", {}).values() if isinstance(v, LocalCluster)}
        for cluster in clusters.values():
            report.sections.append(("logonmesh node logs", cluster.all_logs()))


def attach_logs_on_failure(config: pytest.Config) -> None:
    """Make failing tests show their clusters' logs; cheap and idempotent, for fixtures of test files too."""
    if not config.pluginmanager.has_plugin(_LOGS_PLUGIN):
        config.pluginmanager.register(_NodeLogsOnFailure(), _LOGS_PLUGIN)


@pytest.fixture
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A LocalCluster with test-sized timings, closed after the test whatever happens."""
    from logonmesh.testing import LocalCluster
    attach_logs_on_failure(request.config)
    cluster = LocalCluster()
    try:
        yield cluster
    finally:
        cluster.close()
