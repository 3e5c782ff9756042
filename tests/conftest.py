"""Fixtures shared by the test modules, in the manner of the Flask tutorial's conftest.

Starting real nodes is the slow part of a test, so the clusters here are
module-scoped: a module's tests share one, each test uses names of its own
(uuids), and the cluster is closed after the module whatever happens.  A test
that hurts a cluster (kills, cuts, restarts) builds its own instead, with
``local_cluster`` (the plugin's per-test fixture) or ``LocalCluster()``.
Every cluster made here attaches its nodes' logs to a failing test's report.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from logonmesh.pytest_plugin import attach_logs_on_failure
from logonmesh.testing import LocalCluster, Node


def _cluster(request: pytest.FixtureRequest, count: int, web: bool, prefix: str) -> Iterator[LocalCluster]:
    attach_logs_on_failure(request.config)
    with LocalCluster() as cluster:
        cluster.start_nodes(prefix, count, web=web)
        yield cluster


@pytest.fixture(scope="module")
def two_nodes(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """node1 and node2, each a daemon and a web process, seeing each other."""
    yield from _cluster(request, 2, web=True, prefix="node")


@pytest.fixture(scope="module")
def two_daemons(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """n1 and n2, daemons only: for the mesh, the CLI and the ipc ops."""
    yield from _cluster(request, 2, web=False, prefix="n")


@pytest.fixture(scope="module")
def three_daemons(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """n1, n2 and n3, daemons only: for repair between more than two."""
    yield from _cluster(request, 3, web=False, prefix="n")


@pytest.fixture
def nodes(local_cluster: LocalCluster) -> tuple[Node, Node]:
    """The first two nodes of the module's ``local_cluster`` (a module shadows it with ``two_nodes``)."""
    n1, n2 = local_cluster.nodes[:2]
    return n1, n2
