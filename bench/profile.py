"""Where the time goes: py-spy on live processes, pyinstrument on a boot, summed up as text.

The measured runs are never profiled (a sampler slows its target); each
profile is a separate pass after the figures, on the same kind of cluster:

* the page path: py-spy on the web process while wrk drives ``GET /budget``;
* the propagation path: py-spy on the publishing and on one receiving daemon
  while users are registered at the benchmark's paced rate;
* boot: pyinstrument around ``Daemon.start()`` on a database of N users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter

SPY_RATE = 250


def spy_available() -> bool:
    return shutil.which("py-spy") is not None


def spy(pid: int, seconds: float, out: str, idle: bool = False) -> subprocess.Popen:
    """Start py-spy on pid for `seconds`, writing folded stacks to `out`; the caller waits on it.

    Only samples of the thread holding the GIL count (``--gil``): the web and
    the daemon are GIL-bound, and a thread waiting for the GIL (which py-spy
    would otherwise show in whatever call it just returned from, often a
    socket send) is not where the time goes.
    """
    argv = ["py-spy", "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(SPY_RATE),
            "-f", "raw", "-o", out, "--nonblocking", "--gil"]
    if idle:
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _name(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> 'fn (file.py)'."""
    if " (" not in frame:
        return frame
    fn, where = frame.split(" (", 1)
    return f"{fn} ({os.path.basename(where.split(':', 1)[0])})"


IDLE_LEAVES = ("Condition.wait", "Poller.poll", "select", "poll (", "_run (mirror.py)", "Event.wait",
               "trigger._physical_pull", "wait (threading.py)", "recv (")


def top(folded: str, n: int = 15, skip_idle: bool = True) -> str:
    """The n functions with the most samples, inclusive and self, as text; waiting stacks left out."""
    incl: Counter = Counter()
    own: Counter = Counter()
    total = 0
    if not os.path.exists(folded):
        return "(no profile: py-spy wrote nothing)"
    with open(folded) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = [_name(x) for x in stack.split(";")]
            if skip_idle and any(frames[-1].startswith(leaf) for leaf in IDLE_LEAVES):
                continue
            k = int(count)
            total += k
            for name in set(frames):
                incl[name] += k
            own[frames[-1]] += k
    if not total:
        return "(no busy samples)"
    width = 60
    lines = [f"{total} samples holding the GIL, at {SPY_RATE} Hz", "", f"{'inclusive':>9}  {'self':>6}  function"]
    boring = ("Thread._bootstrap", "Thread.run", "<module>", "_run_module", "run_module", "_run_code",
              "Command.", "CommandGroup.", "Group.invoke", "Context.invoke", "daemon (cli.py)", "web (cli.py)")
    shown = 0
    for name, k in incl.most_common():
        if name.startswith(boring):
            continue
        lines.append(f"{100 * k / total:8.1f}%  {100 * own[name] / total:5.1f}%  {name[:width]}")
        shown += 1
        if shown >= n:
            break
    lines += ["", "most self time:"]
    for name, k in own.most_common(8):
        lines.append(f"{100 * k / total:8.1f}%  {name[:width]}")
    return "\n".join(lines)


def boot_profile(n: int, template: str) -> str:
    """pyinstrument around Daemon.start() on a copy of a database of n users, as text."""
    from pyinstrument import Profiler

    from logonmesh.daemon import config
    from logonmesh.daemon.node import Daemon
    tmp = tempfile.mkdtemp(prefix="lm-prof-", dir="/tmp")
    try:
        db = os.path.join(tmp, "cluster.db")
        shutil.copy(template, db)
        settings = config.load({"name": "prof", "db": db, "run_dir": os.path.join(tmp, "run"),
                                "cookie": "profile-cookie"}, environ={})
        daemon = Daemon(settings)
        profiler = Profiler(interval=0.0005)
        t0 = time.perf_counter()
        profiler.start()
        daemon.start()
        profiler.stop()
        took = time.perf_counter() - t0
        users = daemon.cache.counts()["users"]
        daemon.close()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        head = f"Daemon.start() with {users} users: {took:.3f} s (under the profiler)\n"
        return head + "\n".join(text.splitlines()[:45])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
