"""The pages in a real browser: Debian's Chromium, driven by Playwright, on a two-node cluster.

One person's visit, end to end: sign up on node1, log in on node2 with the
keyboard only, add budget entries on node2, see them on node1, look at the
cluster page, log out.  Every page is checked for console errors, uncaught
page errors, failed requests and Content-Security-Policy violations (the app
sends a strict CSP, so any inline style or script would show up here as a
console error), and a screenshot of each is saved under the test's output
directory (printed at the end; run with -s to see it).

The browser is the system's /usr/bin/chromium (``apt-get install chromium``);
the test never downloads one.  Where there is no Chromium, or it cannot
start, the test is skipped with the reason, unless LOGONMESH_REQUIRE_BROWSER is
set (CI sets it, so there the test always runs).  Cookies ignore the port, so
node1 and node2 on 127.0.0.1 share the session cookie, as they would behind
one host name.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from logonmesh.testing import LocalCluster, Node, eventually

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

CHROMIUM = os.environ.get("LOGONMESH_CHROMIUM", "/usr/bin/chromium")
REQUIRED = bool(os.environ.get("LOGONMESH_REQUIRE_BROWSER"))  # .ci/run sets it: in CI a missing browser fails
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 15_000  # a noisy two-core machine: generous, but a hang still fails

# Watches every page for CSP violations as the browser reports them to the page itself; added through
# the DevTools protocol (not through the page), so the app's CSP does not apply to it.
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', e => window.__cspViolations.push(
    e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' at ' + e.sourceFile + ':' + e.lineNumber));
"""


# ---- the browser, the cluster and what each page did ---------------------------------

def no_browser(reason: str) -> None:
    (pytest.fail if REQUIRED else pytest.skip)(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        no_browser(f"no Chromium at {CHROMIUM} (install Debian's chromium package, or set LOGONMESH_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                 headless=True, timeout=60_000)
        except sync_api.Error as exc:
            no_browser(f"Chromium at {CHROMIUM} cannot start: {str(exc).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def local_cluster(two_nodes: LocalCluster) -> LocalCluster:
    """The shared two nodes (tests/conftest.py), under the name the browser tests use."""
    return two_nodes


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "test-output"
    path.mkdir()
    return path


class Watch:
    """Everything a page reported that a person would count as broken."""

    def __init__(self) -> None:
        self.console_errors: list[str] = []
        self.console_warnings: list[str] = []
        self.page_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.bad_responses: list[str] = []
        self.expected_statuses: set[int] = set()

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, msg: Any) -> None:
        text = f"{msg.text} ({msg.location.get('url', '')})"
        if msg.type == "error":
            # a deliberate error page is logged as a failed load: only its own status is allowed
            if any(f"status of {code}" in msg.text for code in self.expected_statuses):
                return
            self.console_errors.append(text)
        elif msg.type == "warning":
            self.console_warnings.append(text)

    def _failed(self, req: Any) -> None:
        """A load the next navigation cancelled (the favicon, say) is not broken: every other failure is."""
        if req.failure != "net::ERR_ABORTED":
            self.failed_requests.append(f"{req.url}: {req.failure}")

    def _response(self, resp: Any) -> None:
        if resp.status >= 400 and resp.status not in self.expected_statuses:
            self.bad_responses.append(f"{resp.status} {resp.url}")

    def assert_clean(self, page: Any) -> None:
        csp = page.evaluate("window.__cspViolations || []")
        csp_messages = [m for m in self.console_errors + self.console_warnings if "Content Security Policy" in m]
        assert not csp and not csp_messages, f"CSP violations: {csp + csp_messages}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        assert not self.page_errors, f"page errors: {self.page_errors}"
        assert not self.failed_requests, f"failed requests: {self.failed_requests}"
        assert not self.bad_responses, f"error responses: {self.bad_responses}"


class Visit:
    """One page (tab) with its watch, and the screenshots it has taken."""

    def __init__(self, page: Any, out_dir: Path) -> None:
        self.page, self.out_dir = page, out_dir
        self.watch = Watch()
        self.watch.attach(page)
        self.shots: list[Path] = []

    def goto(self, url: str) -> Any:
        resp = self.page.goto(url, wait_until="load")
        self.watch.assert_clean(self.page)
        return resp

    def shot(self, name: str) -> Path:
        path = self.out_dir / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def expect_path(self, node: Node, path: str) -> None:
        sync_api.expect(self.page).to_have_url(re.compile(re.escape(node.url + path) + r"(\?.*)?$"))

    def focused(self) -> dict[str, str]:
        return self.page.evaluate("({id: document.activeElement.id, tag: document.activeElement.tagName,"
                                  " cls: document.activeElement.className, text: document.activeElement.innerText})")


def open_visit(chromium: Any, out_dir: Path, **context_args: Any) -> Visit:
    context = chromium.new_context(**context_args)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_WATCH)
    return Visit(context.new_page(), out_dir)


def footer_text(visit: Visit) -> str:
    return visit.page.locator("footer").inner_text()


# ---- the visit ---------------------------------------------------------------------------

def test_a_visit_across_two_nodes(chromium: Any, local_cluster: LocalCluster, out_dir: Path) -> None:
    n1, n2 = local_cluster.nodes
    username = f"ada-{uuid.uuid4().hex[:6]}"
    visit = open_visit(chromium, out_dir, viewport={"width": 1100, "height": 800})
    page, expect = visit.page, sync_api.expect
    try:
        # -- sign up on node1: first a refused attempt, its errors tied to their fields
        visit.goto(f"{n1.url}/signup")
        expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
        visit.shot("signup")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill("short")
        page.get_by_role("button", name="Sign up").click()
        password = page.locator("#password")
        expect(password).to_have_attribute("aria-invalid", "true")
        expect(password).to_have_attribute("aria-describedby", re.compile(r"\bpassword-error\b"))
        expect(page.locator("#password-error")).to_contain_text("8 to 1024 characters")
        expect(password).to_be_focused()  # the first field in error has the focus
        visit.shot("signup-error")
        password.fill(PASSWORD)
        page.get_by_role("button", name="Sign up").click()
        visit.expect_path(n1, "/")
        visit.watch.assert_clean(page)

        # -- log in on node2 with the keyboard only: skip link first, then Tab to the fields, Enter to submit
        eventually(lambda: n2.call("user", username=username) is not None)
        visit.goto(f"{n2.url}/")
        visit.shot("login")
        page.keyboard.press("Tab")
        assert visit.focused()["cls"] == "skip-link", visit.focused()
        expect(page.locator(".skip-link")).to_be_in_viewport()
        order = []
        for _ in range(12):
            page.keyboard.press("Tab")
            order.append(visit.focused()["id"] or visit.focused()["text"])
            if visit.focused()["id"] == "username":
                break
        assert order[-1] == "username", f"Tab never reached the username field: {order}"
        page.keyboard.type(username)
        page.keyboard.press("Tab")
        assert visit.focused()["id"] == "password", visit.focused()
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        visit.expect_path(n2, "/budget")
        expect(page.locator(".served-by")).to_have_text("node2")
        expect(page.locator(".username")).to_have_text(username)
        expect(page.locator("footer")).to_contain_text("Served by node node2")
        visit.watch.assert_clean(page)
        visit.shot("budget-empty")

        # -- add entries on node2 (one refused first, to see its error beside the field)
        page.get_by_label("What for").fill("Groceries")
        page.get_by_label("Amount").fill("twelve")
        page.get_by_role("button", name="Add entry").click()
        expect(page.locator("#amount-error")).to_be_visible()
        expect(page.locator("#amount")).to_have_attribute("aria-describedby", re.compile(r"\bamount-error\b"))
        expect(page.locator("#amount")).to_be_focused()
        visit.shot("budget-error")
        page.get_by_label("Amount").fill("-42.50")
        page.get_by_label("Amount").press("Enter")
        expect(page.locator(".notice")).to_contain_text("Groceries")
        page.get_by_label("What for").fill("Salary")
        page.get_by_label("Amount").fill("1200")
        page.get_by_role("button", name="Add entry").click()
        expect(page.locator("table.entries tbody tr")).to_have_count(2)
        expect(page.locator(".total")).to_have_text("1,157.50")
        visit.watch.assert_clean(page)
        visit.shot("budget-node2")

        # -- the same entries on node1, once they have replicated
        def node1_has_both() -> None:
            visit.goto(f"{n1.url}/budget")
            expect(page.locator("table.entries tbody tr")).to_have_count(2, timeout=1000)
        eventually(node1_has_both, timeout=10.0, interval=0.2)
        expect(page.locator(".served-by")).to_have_text("node1")
        expect(page.locator("table.entries")).to_contain_text("Groceries")
        expect(page.locator("table.entries")).to_contain_text("\u221242.50")
        expect(page.locator(".total")).to_have_text("1,157.50")
        expect(page.locator("footer .peers-up")).to_have_text("node2")
        visit.shot("budget-node1")

        # -- the cluster page on node1: node2 up, and its heartbeat chart drawn
        page.get_by_role("link", name="Cluster").click()
        visit.expect_path(n1, "/cluster")
        row = page.locator("table.peers tbody tr", has=page.locator("th", has_text="node2"))
        expect(row).to_contain_text("up")
        expect(page.locator("svg.beats rect.bar").first).to_be_visible()
        visit.watch.assert_clean(page)
        visit.shot("cluster")

        # -- the sessions page on node1: the one login, made on node2, marked as this one
        page.get_by_role("link", name="Sessions").click()
        visit.expect_path(n1, "/sessions")
        expect(page.locator("tr.session")).to_have_count(1)
        expect(page.locator("tr.session.current")).to_contain_text("(this session)")
        expect(page.locator("tr.session.current")).to_contain_text("node2")
        visit.watch.assert_clean(page)
        visit.shot("sessions")

        # -- an error page is a page too
        visit.watch.expected_statuses.add(404)
        visit.goto(f"{n1.url}/no-such-page")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        visit.shot("error-404")
        visit.watch.expected_statuses.discard(404)

        # -- log out on node1: node2 no longer knows the session either
        visit.goto(f"{n1.url}/budget")
        page.get_by_role("button", name="Log out everywhere").click()
        visit.expect_path(n1, "/")

        def node2_logged_out() -> None:
            visit.goto(f"{n2.url}/budget")
            visit.expect_path(n2, "/")
        eventually(node2_logged_out, timeout=5.0, interval=0.2)
        visit.watch.assert_clean(page)
    finally:
        print(f"\nscreenshots in {out_dir}:")
        for path in visit.shots:
            print(f"  {path}")
        page.context.close()


def test_the_budget_page_on_a_phone(chromium: Any, local_cluster: LocalCluster, out_dir: Path) -> None:
    """A narrow viewport: nothing scrolls sideways, and the form stacks."""
    n1, _ = local_cluster.nodes
    username = f"phone-{uuid.uuid4().hex[:6]}"
    visit = open_visit(chromium, out_dir, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                       is_mobile=True, has_touch=True)
    page = visit.page
    try:
        visit.goto(f"{n1.url}/signup")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign up").click()
        visit.expect_path(n1, "/")
        visit.shot("phone-login")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        visit.expect_path(n1, "/budget")
        for label, amount in (("Rent", "-950"), ("A rather long label for a coffee with a friend", "-3.20")):
            page.get_by_label("What for").fill(label)
            page.get_by_label("Amount").fill(amount)
            page.get_by_role("button", name="Add entry").click()
            sync_api.expect(page.locator(".notice")).to_contain_text(label)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"
        visit.shot("phone-budget")
        page.get_by_role("link", name="Cluster").click()
        visit.shot("phone-cluster")
        visit.watch.assert_clean(page)
    finally:
        print(f"\nscreenshots in {out_dir}:")
        for path in visit.shots:
            print(f"  {path}")
        page.context.close()


def test_the_watch_would_see_a_csp_violation(chromium: Any, local_cluster: LocalCluster, out_dir: Path) -> None:
    """A control for the checks above: a page with inline style and script, served with the app's own CSP.

    The page is answered by the browser's request routing under node1's
    origin, so it carries the exact header the app sends; the watch must
    report both violations, or its silence on the real pages means nothing.
    """
    n1, _ = local_cluster.nodes
    visit = open_visit(chromium, out_dir)
    page = visit.page
    try:
        csp = page.goto(f"{n1.url}/").headers["content-security-policy"]
        page.route(f"{n1.url}/csp-probe", lambda route: route.fulfill(
            status=200, content_type="text/html", headers={"Content-Security-Policy": csp},
            body='<!doctype html><p style="color: red">styled</p><script>document.title = "ran"</script>'))
        page.goto(f"{n1.url}/csp-probe", wait_until="load")
        eventually(lambda: len(page.evaluate("window.__cspViolations")) >= 2, timeout=5.0)
        assert page.title() != "ran"
        assert any("Content Security Policy" in m for m in visit.watch.console_errors), visit.watch.console_errors
        with pytest.raises(AssertionError, match="CSP violations"):
            visit.watch.assert_clean(page)
    finally:
        page.context.close()
