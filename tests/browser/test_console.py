"""The web console in a real browser: what a person signing in with a key sees and can do.

Every wait is Playwright's auto-waiting `expect` with a deadline; nothing sleeps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from batchgate.domain.keys import KEY_PREFIX
from tests.browser.conftest import ADMIN_KEY, Console, screenshot_dir
from tests.e2e.helpers import jsonl
from tests.harness import chat_line, read_jsonl_bytes

PHONE = {"width": 375, "height": 740}


def sign_in(page: Page, console: Console, key: str) -> None:
    page.goto(f"{console.url}/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def create_batch(http: httpx.Client, rows: list[dict[str, Any]], **create: Any) -> str:
    file = http.post("/v1/files", files={"file": ("input.jsonl", jsonl(*rows))}, data={"purpose": "batch"})
    file.raise_for_status()
    batch = http.post(
        "/v1/batches",
        json={
            "input_file_id": file.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **create,
        },
    )
    batch.raise_for_status()
    return str(batch.json()["id"])


def test_sign_in_upload_create_watch_progress_and_download(page: Page, console: Console, tmp_path: Path) -> None:
    # 30 lines answered after 100 ms each, 8 at a time: long enough to see the batch run.
    rows = [chat_line(f"q{i:02d}", f"question {i} @latency:100") for i in range(30)]
    source = tmp_path / "questions.jsonl"
    source.write_bytes(jsonl(*rows))
    sign_in(page, console, console.team_key)
    expect(page.locator("#who")).to_have_text(re.compile("Team research"))

    page.get_by_role("link", name="Files").click()
    page.locator("#file-input").set_input_files(str(source))
    expect(page.get_by_role("status").filter(has_text="Uploaded questions.jsonl")).to_be_visible()
    expect(page.locator("table.files tbody tr").first).to_contain_text("questions.jsonl")

    page.get_by_label("Metadata").fill("suite=browser")
    page.get_by_role("button", name="Create batch", exact=True).click()
    expect(page).to_have_url(re.compile(r"/ui/batches/batch_"))
    batch_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1 .badge")).to_have_text("completed", timeout=30_000)
    expect(page.locator("#progress-h + .progress")).to_contain_text("30 completed, 0 failed, 0 pending of 30")
    expect(page.locator(".timeline")).to_contain_text("in progress")
    expect(page.locator("#cost")).not_to_have_text("$0.0000")  # priced model: spend shows
    expect(page.get_by_text("suite=browser")).to_be_visible()

    # One request's output line, from the requests table.
    page.get_by_role("button", name="View result of q03").click()
    expect(page.locator("pre.json")).to_contain_text('"content": "echo: question 3 @latency:100"')

    with page.expect_download() as info:
        page.get_by_role("button", name="Download output").click()
    lines = read_jsonl_bytes(Path(info.value.path()).read_bytes())
    assert sorted(line["custom_id"] for line in lines) == [r["custom_id"] for r in rows]
    by_id = {line["custom_id"]: line for line in lines}
    assert by_id["q07"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 7 @latency:100"

    # The list shows it with its dialect and finished progress.
    page.get_by_role("link", name="Batches", exact=True).click()
    row = page.locator(f'tr[data-id="{batch_id}"]')
    expect(row).to_contain_text("openai")
    expect(row).to_contain_text("30 completed")


def test_cancel_a_running_batch_after_confirming(page: Page, console: Console) -> None:
    with console.http(console.team_key) as http:
        batch_id = create_batch(http, [chat_line(f"slow{i}", "wait @latency:20000") for i in range(12)])
    sign_in(page, console, console.team_key)
    page.goto(f"{console.url}/batches/{batch_id}")
    expect(page.locator("h1 .badge")).to_have_text("in progress", timeout=15_000)

    page.get_by_role("button", name="Cancel batch").click()
    dialog = page.get_by_role("dialog", name="Cancel this batch?")
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_have_count(0)
    expect(page.locator("h1 .badge")).to_have_text("in progress")

    page.get_by_role("button", name="Cancel batch").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel batch").click()
    expect(page.locator("h1 .badge")).to_have_text("cancelled", timeout=15_000)
    expect(page.locator("#progress-h + .progress")).to_contain_text("0 completed, 12 failed, 0 pending of 12")
    expect(page.get_by_role("button", name="Cancel batch")).to_have_count(0)
    expect(page.get_by_role("button", name="Download errors")).to_be_visible()


def test_list_filters_and_pages(page: Page, console: Console) -> None:
    with console.http(console.other_key) as http:
        ids = [create_batch(http, [chat_line("only", "hi")], metadata={"run": f"n{i}"}) for i in range(27)]
    sign_in(page, console, console.other_key)
    rows = page.locator("table.batches tbody tr")
    expect(rows).to_have_count(25)
    expect(rows.first).to_have_attribute("data-id", ids[-1])  # newest first
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(2)
    expect(rows.last).to_have_attribute("data-id", ids[0])
    page.get_by_role("link", name="← Newer").click()
    expect(rows).to_have_count(25)

    page.get_by_label("Metadata").fill("run=n3")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", ids[3])
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Status").select_option("cancelled")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No batches match.")).to_be_visible()


def test_another_teams_batch_is_not_found(page: Page, console: Console) -> None:
    with console.http(console.team_key) as http:
        batch_id = create_batch(http, [chat_line("mine", "secret")])
    sign_in(page, console, console.other_key)
    page.goto(f"{console.url}/batches/{batch_id}")
    expect(page.get_by_role("heading", name="Batch not found")).to_be_visible()
    page.goto(console.url + "/")
    expect(page.locator(f'tr[data-id="{batch_id}"]')).to_have_count(0)


def test_a_wrong_key_is_refused_at_sign_in(page: Page, console: Console) -> None:
    page.goto(console.url + "/batches/x")
    expect(page).to_have_url(re.compile(r"/ui/signin\?next="))
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()


def test_admin_sees_spend_teams_and_manages_keys(page: Page, console: Console) -> None:
    with console.http(console.team_key) as http:
        create_batch(http, [chat_line("spend", "count me")])
    sign_in(page, console, ADMIN_KEY)
    page.get_by_role("link", name="Admin").click()
    expect(page.locator("table.spend")).to_contain_text("research")
    expect(page.locator("table.teams")).to_contain_text("other")

    page.locator("#team-name").fill("ops")
    page.locator("#team-form").get_by_role("button", name="Create").click()
    expect(page.locator("table.teams")).to_contain_text("ops")

    page.locator("#key-team").select_option("ops")
    page.locator("#key-name").fill("nightly")
    page.locator("#key-form").get_by_role("button", name="Create").click()
    new_key = page.locator("#new-key")
    expect(new_key).to_have_text(re.compile("^" + re.escape(KEY_PREFIX)))
    key = new_key.inner_text()
    with console.http(key) as http:
        assert http.get("/v1/batches").status_code == 200

    key_row = page.locator("table.keys tr", has_text="nightly")
    key_row.get_by_role("button", name=re.compile("Revoke key")).click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke key").click()
    expect(key_row).to_contain_text("revoked")
    with console.http(key) as http:
        assert http.get("/v1/batches").status_code == 401


def test_deployments_show_the_last_hour_as_charts(page: Page, console: Console) -> None:
    with console.http(console.team_key) as http:
        create_batch(http, [chat_line(f"d{i}", "load") for i in range(5)])
    sign_in(page, console, console.team_key)
    page.get_by_role("link", name="Deployments").click()
    card = page.locator('section.deployment[data-name="fake-model/0"]')
    expect(card).to_contain_text("circuit closed")
    expect(card.locator("svg.chart")).to_have_count(6)
    chart = card.get_by_role("img", name=re.compile("^Requests per minute"))
    expect(chart).to_have_attribute("aria-label", re.compile(r"peak [1-9]\d* requests"))
    expect(card.locator("svg.chart rect.barfill").first).to_be_visible()


@pytest.mark.parametrize("page", [PHONE], indirect=True)
def test_a_phone_screen_gets_the_whole_console(page: Page, console: Console) -> None:
    sign_in(page, console, console.team_key)
    expect(page.locator("table.batches tbody tr").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_text("Drop a JSONL file here")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_screenshots_of_each_page(page: Page, console: Console, tmp_path: Path) -> None:
    """The README's pictures (`make screenshots` writes them to docs/), taken with data on every page."""
    out = screenshot_dir(tmp_path)
    with console.http(console.team_key) as http:
        running = create_batch(
            http,
            [chat_line(f"row{i}", f"@latency:{300 if i < 40 else 60000}") for i in range(60)],
            metadata={"project": "evals", "owner": "ana"},
        )
        create_batch(http, [chat_line("a", "fine"), chat_line("b", "no", model="unknown-model")])  # fails validation
        cancelled = create_batch(http, [chat_line(f"c{i}", "@latency:60000") for i in range(5)])
        http.post(f"/v1/batches/{cancelled}/cancel").raise_for_status()
    with console.http(console.other_key) as http:
        create_batch(http, [chat_line(f"o{i}", f"@latency:{20 * i}") for i in range(25)], metadata={"nightly": "yes"})
    sign_in(page, console, ADMIN_KEY)
    expect(page.locator(f'tr[data-id="{running}"]')).to_contain_text("40 completed", timeout=30_000)
    expect(page.locator("table.batches .badge", has_text="failed")).to_have_count(1)
    page.screenshot(path=str(out / "console-batches.png"))
    page.goto(f"{console.url}/batches/{running}")
    expect(page.locator("#rate")).not_to_have_text("—")
    expect(page.locator("table.requests tbody tr").first).to_be_visible()
    page.screenshot(
        path=str(out / "console-batch.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 1200}
    )  # down to the first requests
    page.get_by_role("link", name="Files").click()
    expect(page.locator("table.files tbody tr").first).to_be_visible()
    page.screenshot(path=str(out / "console-files.png"))
    page.get_by_role("link", name="Deployments").click()
    expect(page.locator("svg.chart rect.barfill").first).to_be_visible()
    page.screenshot(path=str(out / "console-deployments.png"))
    page.get_by_role("link", name="Admin").click()
    expect(page.locator("table.spend")).to_be_visible()
    page.screenshot(path=str(out / "console-admin.png"))
    for name in (
        "console-batches.png",
        "console-batch.png",
        "console-files.png",
        "console-deployments.png",
        "console-admin.png",
    ):
        assert (out / name).stat().st_size > 10_000, name
    with console.http(console.team_key) as http:
        http.post(f"/v1/batches/{running}/cancel").raise_for_status()
