"""The README is part of the product: its table and its example must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from logonmesh.daemon.config import markdown_table
from logonmesh.testing import LocalCluster

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_configuration_table_is_the_one_the_code_defines() -> None:
    table = re.search(r"<!-- config-table -->\n(.*?)\n<!-- /config-table -->", README, re.S)
    assert table, "README lost its config-table markers"
    assert table.group(1) == markdown_table(), "run: python -m logonmesh.daemon.config, and paste it into the README"


def test_the_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "pip install -e . && honcho start" in first_screen
    assert "pip install -e '.[test]' && pytest" in first_screen


def test_the_harness_example_runs(local_cluster: LocalCluster) -> None:
    """The 'Testing your clustered app' example, run as written."""
    block = re.search(r"## Testing your clustered app.*?```python\n(.*?)```", README, re.S)
    assert block, "README lost its harness example"
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    tests = [fn for name, fn in scope.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0](local_cluster)
