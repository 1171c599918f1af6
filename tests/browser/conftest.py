"""Browser fixtures: Debian's chromium driven by Playwright (never `playwright install`: no download),
one browser per module (there is one), a fresh context per test, and one gateway per module with two teams."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import single_model_config
from tests.harness import FakeUpstreamProcess, ServerProcess, poll_until, running_server

CHROMIUM = "/usr/bin/chromium"
ADMIN_KEY = "sk-admin-browser-tests"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}


def _missing(reason: str) -> None:
    if os.environ.get("CI"):  # CI installs chromium (make test → scripts/ensure-chromium.sh): a skip would hide a gap
        pytest.fail(reason)
    pytest.skip(reason)


INSTALL_MARKS = Path(__file__).resolve().parents[2] / ".venv"  # scripts/ensure-chromium.sh --background


def _wait_for_background_install() -> None:
    """`make test` starts chromium's install in the background; these tests run last and wait for it."""
    started, done = INSTALL_MARKS / "chromium-install.started", INSTALL_MARKS / "chromium-install.done"
    if os.path.exists(CHROMIUM) or not started.exists():
        return
    log = INSTALL_MARKS / "chromium-install.log"
    poll_until(
        done.exists,
        900,
        interval=1,
        message=lambda: (
            f"chromium's install has not finished:\n{log.read_text(errors='replace') if log.exists() else ''}"
        ),
    )


# Module scope, not session: the sync API runs an event loop in the main thread while it lives, and
# every asyncio test collected after this package would fail with "cannot be called from a running
# event loop" if it outlived the module.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    _wait_for_background_install()
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        _missing(f"{CHROMIUM} is missing (scripts/ensure-chromium.sh installs Debian's chromium)")
    with sync_playwright() as playwright:
        # launch() gives the browser a fresh temporary profile (user-data-dir) of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Console:
    server: ServerProcess
    team_key: str  # team "research"
    other_key: str  # team "other"

    @property
    def url(self) -> str:
        return f"{self.server.url}/ui"

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture(scope="module")
def console(fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A gateway with an admin key and two teams, each with a key."""
    config = single_model_config(fake_upstream.url, max_concurrency=8)
    config["models"][0]["price"] = {"input_per_mtok": 2.5, "output_per_mtok": 10.0}
    with running_server(
        config, workdir=tmp_path_factory.mktemp("console"), env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}
    ) as server:
        admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        keys = []
        for team in ("research", "other"):
            admin.post("/admin/teams", json={"name": team}).raise_for_status()
            keys.append(admin.post("/admin/keys", json={"team": team, "name": f"{team}-console"}).json()["key"])
        admin.close()
        yield Console(server, *keys)


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh context (its own sessionStorage) and page; any script error on it fails the test."""
    viewport = getattr(request, "param", DESKTOP)
    context = browser.new_context(viewport=viewport, accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text) if msg.type == "error" and "404" not in msg.text and "401" not in msg.text else None
        ),
    )
    yield page
    context.close()
    assert not errors, f"script errors in the console: {errors}"


def screenshot_dir(tmp_path: Path) -> Path:
    """`make screenshots` (BATCHGATE_SCREENSHOTS=docs) writes the README's pictures; otherwise a temp dir."""
    if os.environ.get("BATCHGATE_SCREENSHOTS") == "docs":
        return Path(__file__).resolve().parents[2] / "docs"
    return tmp_path
