"""Sessions survive a restart of every node: written behind to the cluster database, loaded at boot.

The end-to-end test runs the demo on two real nodes, stops them all (SIGTERM)
and starts them again on the same database, then checks on each node that an
old cookie still serves the page, that a cookie logged out before the stop
stays refused, and that a session whose lifetime ended while the cluster was
down is not brought back.  The rest is in-process: the cache's batcher (one
row per key, however many writes) and the stores' merge rule (an older write
never replaces a newer row, an ending beats every live copy).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Iterator

import pytest
import redis
import requests

from logonmesh.daemon.cache import PERSISTED_KINDS, Cache
from logonmesh.daemon.kinds import Entry
from logonmesh.discovery import Store, StoredSession, open_store
from logonmesh.testing import Browser, LocalCluster, Node, eventually

PASSWORD = "correct horse battery"
SHORT_TTL_S = 8   # the daemon session lifetime on the node that issues the session meant to expire
REDIS = "redis://127.0.0.1:6379/0"


# ---- end to end -----------------------------------------------------------------------------

def _copy(b: Browser) -> requests.Session:
    return _copy_session(b.session)


def _budget(node: Node, cookies: requests.Session) -> requests.Response:
    """/budget with these cookies, on a copy: a refused cookie's answer replaces it, and every check must send
    the original."""
    return Browser(node.url, _copy_session(cookies)).get("/budget")


def _copy_session(session: requests.Session) -> requests.Session:
    copied = requests.Session()
    copied.cookies.update(session.cookies)
    return copied


def _wait_status(node: Node, cookies: requests.Session, status: int) -> None:
    def check() -> None:
        assert _budget(node, cookies).status_code == status
    eventually(check)


def _logged_in(node: Node, username: str) -> Browser:
    b = Browser(node.url)
    assert b.signup(username, PASSWORD).status_code == 302
    assert b.login(username, PASSWORD).status_code == 302
    assert b.authenticated()
    return b


def _stored(db: str) -> dict[str, int]:
    """What the cluster database holds: live and ended sessions (kind s)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select value is null, count(*) from sessions where kind = 's' group by 1").fetchall()
    counts = dict(rows)
    return {"live": counts.get(0, 0), "ended": counts.get(1, 0)}


def test_a_cookie_outlives_a_restart_of_every_node_and_an_ending_stays_ended() -> None:
    with LocalCluster() as cluster:
        n1, n2 = cluster.start_nodes("fr", 2)
        tag = uuid.uuid4().hex[:8]
        # one session with a short lifetime, issued by n2 alone: its web judges lifetimes by the same
        # setting, so n2 goes back to the default before the other logins
        n2.extra_env["LOGONMESH_SESSION_TTL"] = str(SHORT_TTL_S)
        n2.restart()
        short_copy = _copy(_logged_in(n2, f"short-{tag}"))
        expires_at = time.monotonic() + SHORT_TTL_S
        for node in (n1, n2):
            _wait_status(node, short_copy, 200)
        n2.extra_env.clear()
        n2.restart()

        kept = _copy(_logged_in(n1, f"kept-{tag}"))
        ended = _logged_in(n1, f"ended-{tag}")
        ended_copy = _copy(ended)
        assert ended.logout().status_code == 302
        for node in (n1, n2):
            for cookies, status in ((kept, 200), (ended_copy, 302)):
                _wait_status(node, cookies, status)

        for node in cluster.nodes:
            node.stop()
        stored = _stored(cluster.db)
        # the clean stop saved them: the kept and the short session live, the logged-out one ended
        assert stored["live"] >= 2 and stored["ended"] >= 1, stored
        time.sleep(max(0.0, expires_at - time.monotonic()) + 0.5)  # the short session's lifetime ends while down
        for node in cluster.nodes:
            node.start()
        cluster.wait_ready()

        for node in (n1, n2):
            assert _budget(node, kept).status_code == 200, f"{node.name}: the kept cookie no longer works"
            for cookies in (ended_copy, short_copy):
                resp = _budget(node, cookies)
                assert (resp.status_code, resp.headers.get("Location")) == (302, "/"), node.name
            cache = node.status()["cache"]
            assert cache["tombstones"] >= 1, f"{node.name}: the logout's ending was not loaded: {cache}"


# ---- the batcher ----------------------------------------------------------------------------

def _session(key: str, hlc: int, value: dict | None, expires: int, origin: str = "n1") -> Entry:
    return Entry("s", key, hlc, origin, value, expires)


LIVE = {"uid": "u1", "user": "alice"}
FAR = 2**42  # an expiry well in the future (ms since the epoch)


def test_a_burst_of_writes_to_one_key_is_one_row_with_the_last_state() -> None:
    cache = Cache()
    cache.persist(PERSISTED_KINDS)
    token = "t" * 43
    cache.merge([_session(token, hlc, LIVE, FAR) for hlc in range(1, 50)], now=1)
    cache.merge([_session(token, 50, None, FAR + 5)], now=1)
    cache.merge([Entry("t", "alice@n1", 1, "n1", {"n": 1}, FAR)], now=1)  # not a persisted kind
    batch = cache.take_unsaved()
    assert batch == [_session(token, 50, None, FAR + 5)]
    assert cache.take_unsaved() == []


def test_a_live_copy_that_loses_to_an_ending_is_saved_as_the_longer_ending() -> None:
    cache = Cache()
    cache.persist(PERSISTED_KINDS)
    cache.merge([_session("k" * 43, 5, None, 1000)], now=1)
    cache.take_unsaved()
    cache.merge([_session("k" * 43, 9, LIVE, 3000)], now=1)  # refused, but the ending now outlives it
    assert cache.take_unsaved() == [_session("k" * 43, 5, None, 3000)]


def test_an_unsaved_batch_goes_out_again_with_the_next() -> None:
    cache = Cache()
    cache.persist(PERSISTED_KINDS)
    cache.merge([_session("a" * 43, 1, LIVE, FAR)], now=1)
    batch = cache.take_unsaved()
    cache.unsaved(batch)  # the store refused it
    assert cache.take_unsaved() == batch


def test_a_cache_that_does_not_persist_keeps_nothing_for_the_store() -> None:
    cache = Cache()
    cache.merge([_session("a" * 43, 1, LIVE, FAR)], now=1)
    assert cache.take_unsaved() == []


# ---- the stores' merge rule -----------------------------------------------------------------

@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = str(tmp_path / "cluster.db")
    else:
        try:
            redis.Redis.from_url(REDIS, socket_connect_timeout=1, socket_timeout=1).ping()
        except redis.RedisError as exc:
            pytest.skip(f"no Redis at {REDIS}: {exc}")
        prefix = f"lmtest-{uuid.uuid4().hex[:12]}"
        url = f"{REDIS}?prefix={prefix}"
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()
        if request.param == "redis":
            client = redis.Redis.from_url(REDIS)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _row(key: str, hlc: int, value: object, expires: int, origin: str = "n1", kind: str = "s") -> StoredSession:
    return StoredSession(kind, key, hlc, origin, value, expires)


def test_an_older_write_never_replaces_a_newer_row(store: Store) -> None:
    exp = _now_ms() + 60_000
    newer = _row("a" * 43, 20, {"data": b"new"}, exp, kind="d")
    store.save_sessions([newer])
    store.save_sessions([_row("a" * 43, 10, {"data": b"old"}, exp + 1000, kind="d"),
                         _row("a" * 43, 20, {"data": b"tie"}, exp, origin="a0", kind="d")])
    assert list(store.load_sessions(_now_ms())) == [newer]


def test_an_ending_beats_every_live_row_and_keeps_the_later_expiry(store: Store) -> None:
    exp = _now_ms() + 60_000
    store.save_sessions([_row("b" * 43, 50, LIVE, exp)])
    store.save_sessions([_row("b" * 43, 10, None, exp + 1)])       # an older ending still wins
    store.save_sessions([_row("b" * 43, 99, LIVE, exp + 5000)])    # a later live copy does not come back
    assert list(store.load_sessions(_now_ms())) == [_row("b" * 43, 10, None, exp + 5000)]


def test_expired_rows_are_not_loaded_and_are_purged(store: Store) -> None:
    now = _now_ms()
    store.save_sessions([_row("c" * 43, 1, LIVE, now - 1), _row("d" * 43, 1, LIVE, now + 60_000)])
    assert [row.key for row in store.load_sessions(now)] == ["d" * 43]
    store.purge_sessions(now)
    assert [row.key for row in store.load_sessions(0)] == ["d" * 43]
