"""One import root: installed, logonmesh adds ``logonmesh`` and nothing else, and shadows nobody.

Real installs, nothing faked: a wheel built from this checkout, a fresh venv
with python-daemon (which owns the top-level name ``daemon``) installed first,
and a user's project with its own ``web/`` and ``daemon/`` packages running a
two-node cluster test through our pytest plugin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("zmq", "flask", "requests", "msgpack", "waitress", "sqlite_utils", "redis", "werkzeug",
         "logonmesh.testing", "logonmesh.daemon")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built the way pip builds it for a user, from a copy (setuptools writes build/)."""
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "var", "*.egg-info",
                                                             "__pycache__", ".ruff_cache", ".mypy_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = out.glob("logonmesh-*.whl")
    return built


def test_the_wheel_holds_one_import_root_and_our_two_entry_points(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"logonmesh", dist_info}
    for path in ("logonmesh/daemon/node.py", "logonmesh/web/templates/base.html", "logonmesh/web/static/style.css",
                 "logonmesh/discovery/sqlite.py", "logonmesh/testing.py", "logonmesh/pytest_plugin.py"):
        assert path in names
    assert not any(n.startswith(("logonmesh/bench", "logonmesh/tests")) for n in names)
    assert "logonmesh = logonmesh.cli:main" in entry_points
    assert "logonmesh = logonmesh.pytest_plugin" in entry_points


def requirements(wheel: Path) -> list[str]:
    """The wheel's install_requires, from its METADATA (extras left out)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def test_python_daemon_installed_first_stays_python_daemons(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv of its own: python-daemon (which owns ``daemon``) and our dependencies first, then us."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    (site,) = env_dir.glob("lib/python*/site-packages")
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "python-daemon", *requirements(wheel)], check=True, capture_output=True, timeout=300)
    before = set(os.listdir(site))
    daemon_files = sorted(p.name for p in (site / "daemon").iterdir())
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)

    added = set(os.listdir(site)) - before
    assert {n for n in added if not n.startswith("__pycache__")} == {"logonmesh", wheel.name.split("-py3")[0]
                                                                     + ".dist-info"}
    record = next(site.glob("logonmesh-*.dist-info")) / "RECORD"
    assert {line.split("/")[0] for line in record.read_text().splitlines() if line} <= added | {".."}
    assert sorted(p.name for p in (site / "daemon").iterdir()) == daemon_files, "python-daemon's files untouched"
    check = ("import daemon, logonmesh.daemon.node as node; "
             "assert hasattr(daemon, 'DaemonContext'), daemon.__file__; print(node.__file__)")
    out = subprocess.run([str(py), "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(site)), "the installed copy, not this checkout"
    helped = subprocess.run([str(env_dir / "bin" / "logonmesh"), "--help"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert helped.returncode == 0 and "daemon" in helped.stdout and "web" in helped.stdout, helped.stderr


USER_TEST = '''
from logonmesh.testing import Browser, eventually


def test_sign_up_on_one_node_log_in_on_the_other(local_cluster):
    n1, n2 = local_cluster.start_nodes("node", 2)
    assert Browser(n1.url).signup("ada", "correct horse").status_code == 302
    on_n2 = Browser(n2.url)
    eventually(lambda: on_n2.login("ada", "correct horse").status_code == 302, timeout=10)
    assert on_n2.authenticated()
'''


def test_a_project_with_its_own_web_and_daemon_packages_runs_a_cluster_test(tmp_path: Path) -> None:
    """Nodes start as ``python -m logonmesh``, so the user's folders first on the path change nothing."""
    for package in ("web", "daemon"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"WHOSE = 'the user project, not logonmesh ({package})'\n")
    (tmp_path / "test_app.py").write_text(textwrap.dedent(USER_TEST))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_the_pytest_plugin_imports_nothing_heavy_until_a_fixture_is_used(tmp_path: Path) -> None:
    code = ("import sys, logonmesh.pytest_plugin; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
