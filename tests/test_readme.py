"""The README is part of the product: its table and its example must stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from logonmesh.daemon.config import markdown_table
from logonmesh.testing import LocalCluster

README = (Path(__file__).parent.parent / "README.md").read_text()
FLASK_SECTION = "## Use logonmesh in your Flask app"


def section(heading: str) -> str:
    """The README's text from a heading to the next heading of the same level."""
    start = README.find(heading + "\n")
    assert start >= 0, f"README lost its section {heading!r}"
    end = README.find("\n## ", start + len(heading))
    return README[start:] if end < 0 else README[start:end]


def named_blocks(text: str) -> dict[str, str]:
    """The python blocks of a text whose first line names their file (``# myapp.py``), by that name."""
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", text, re.S)
    return {name: f"# {name}\n{body}" for name, body in blocks}


def test_the_configuration_table_is_the_one_the_code_defines() -> None:
    table = re.search(r"<!-- config-table -->\n(.*?)\n<!-- /config-table -->", README, re.S)
    assert table, "README lost its config-table markers"
    assert table.group(1) == markdown_table(), "run: python -m logonmesh.daemon.config, and paste it into the README"


def test_the_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "pip install -e . && honcho start" in first_screen
    assert "pip install -e '.[test]' && pytest" in first_screen


def test_the_first_screen_links_to_the_flask_section() -> None:
    first_screen = "\n".join(README.splitlines()[:24])
    assert "(#use-logonmesh-in-your-flask-app)" in first_screen
    assert FLASK_SECTION in README


def test_the_harness_example_runs(local_cluster: LocalCluster) -> None:
    """The 'Testing your clustered app' example, run as written."""
    block = re.search(r"## Testing your clustered app.*?```python\n(.*?)```", README, re.S)
    assert block, "README lost its harness example"
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    tests = [fn for name, fn in scope.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0](local_cluster)


def test_the_flask_section_has_the_app_its_procfile_line_and_its_test() -> None:
    text = section(FLASK_SECTION)
    assert set(named_blocks(text)) == {"myapp.py", "test_myapp.py"}
    assert "\nweb: logonmesh web --name node1 --app myapp:create_app\n" in text
    assert 'LocalCluster(app="myapp:create_app")' in named_blocks(text)["test_myapp.py"]


def test_the_flask_app_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'Use logonmesh in your Flask app', run as written: its myapp.py alone in a fresh directory outside the
    repository, and its test run from there (LocalCluster imports the app from the working directory)."""
    blocks = named_blocks(section(FLASK_SECTION))
    (tmp_path / "myapp.py").write_text(blocks["myapp.py"])
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "test_myapp"}
    exec(compile(blocks["test_myapp.py"], "README.md (test_myapp.py)", "exec"), scope)
    tests = [fn for name, fn in scope.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_deploy_holds_its_scale_figures_rather_than_citing_files_a_clone_lacks() -> None:
    """``bench/results/`` is git-ignored: a doc that took its figures from there must carry them itself."""
    deploy = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    for cited in re.findall(r"\(`(bench/results/[^`]*)`\)", deploy):
        raise AssertionError(f"docs/deploy.md cites {cited} as its source, which a clone does not have")
    rows = re.findall(r"^\| (\d+) \| (SQLite|Redis), heartbeat (1 s|100 ms) \|", deploy, re.M)
    assert {int(n) for n, db, beat in rows if (db, beat) == ("SQLite", "1 s")} == {2, 4, 8, 16}
    assert {int(n) for n, db, _ in rows if db == "Redis"} == {16, 32}
