"""The pytest plugin (entry point ``pytest11``): the ``local_cluster`` fixture.

pytest imports this module in every project that installs logonmesh, so it
imports nothing heavy, and its only hooks until a test asks for a cluster are
the two that declare its option and marker (a few lines each, no import):
the harness is imported by the fixture, and the hook that attaches every
node's logs to a failing test's report is registered by its first use.

Which app the cluster's webs serve (MODULE:FACTORY, imported from the
working directory): a test's ``@pytest.mark.logonmesh(app="myapp:create_app")``
(on the test, its class or its module), else ``--logonmesh-app`` on the
command line, else the ini option ``logonmesh_app``, else the demo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, Iterator

import pytest

if TYPE_CHECKING:
    from pluggy import Result

_LOGS_PLUGIN = "logonmesh-node-logs"
_MARKER_ARGS = ("app", "cwd")
_APP_HELP = "the Flask app every local_cluster node serves, MODULE:FACTORY (default: the logonmesh demo)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("logonmesh")
    group.addoption("--logonmesh-app", dest="logonmesh_app", default=None, metavar="MODULE:FACTORY",
                    help=_APP_HELP + "; a test's logonmesh marker wins")
    parser.addini("logonmesh_app", _APP_HELP + "; --logonmesh-app and a test's logonmesh marker win", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "logonmesh(app=None, cwd=None): the app (MODULE:FACTORY) that the "
                                       "local_cluster fixture's nodes serve, and the directory it imports from")


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


def cluster_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """LocalCluster's app and cwd for this test: its marker's, else the option's, else the ini's."""
    marker = request.node.get_closest_marker("logonmesh")
    kwargs = dict(marker.kwargs) if marker else {}
    unknown = sorted(set(kwargs) - set(_MARKER_ARGS))
    if (marker and marker.args) or unknown:
        pytest.fail(f"@pytest.mark.logonmesh takes only the keywords {', '.join(_MARKER_ARGS)}; "
                    f"got {', '.join(unknown) or 'a positional argument'}", pytrace=False)
    if not kwargs.get("app"):
        kwargs["app"] = request.config.getoption("logonmesh_app") or request.config.getini("logonmesh_app") or None
    return kwargs


@pytest.fixture
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A LocalCluster with test-sized timings and the app named as above, closed after the test whatever happens."""
    from logonmesh.testing import LocalCluster
    attach_logs_on_failure(request.config)
    cluster = LocalCluster(**cluster_options(request))
    try:
        yield cluster
    finally:
        cluster.close()
