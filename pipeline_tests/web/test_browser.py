"""In a real headless Chromium (Debian's package, driven by Playwright): pages load, charts
render, filters and pagination work, screenshots are taken; tampering with URLs gets 404."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline.web.app import create_app
from pipeline.web.tenants import issue_token
from pipeline_tests.support import customer_with_reports, new_customer, served

SCREENSHOTS = Path(os.environ.get("PIPELINE_SCREENSHOTS", "/tmp/pipeline-screenshots"))


def _chromium() -> str | None:
    for candidate in (os.environ.get("PIPELINE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def site(stack, clients):
    if _chromium() is None:
        pytest.skip("Debian's chromium is not installed (scripts/ensure-chromium.sh installs it as root)")
    a, b = new_customer(), new_customer()
    customer_with_reports(stack, clients("s3"), a, objects=4, rows=80)
    customer_with_reports(stack, clients("s3"), b, objects=1, rows=20)
    app = create_app(stack, secret="browser-test")
    with served(app, 8600) as url:
        yield {
            "url": url,
            "a": a,
            "b": b,
            "token_a": issue_token(stack.database_url, a),
            "token_b": issue_token(stack.database_url, b),
        }
    app.state.warehouse.close()


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


def _sign_in(browser, site, token):
    page = browser.new_page()
    page.goto(site["url"] + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(site["url"] + "/")
    return page


def test_pages_charts_filters_and_pagination_in_chromium(browser, site):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = _sign_in(browser, site, site["token_a"])
    assert page.locator("#reports").inner_text() == "4"
    bars = page.locator("svg.chart rect.bar")
    assert bars.count() >= 1 and page.locator("svg.chart polyline.rate").count() == 1
    box = page.locator("svg.chart").first.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 80  # rendered, not just present
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

    page.click("text=Sources")
    assert page.locator("#sources").count() == 1
    page.goto(site["url"] + "/sources?per_page=5")
    first_page = page.locator("#sources tr td:first-child").all_inner_texts()
    assert len(first_page) == 5
    page.click("#next")
    assert "page 2 of" in page.locator("#page-info").inner_text()
    assert not set(first_page) & set(page.locator("#sources tr td:first-child").all_inner_texts())
    page.click("a[data-sort=ip]")
    ips = page.locator("#sources tr td:first-child").all_inner_texts()
    assert ips == sorted(ips, reverse=True) or ips == sorted(ips)
    page.fill("input[name=q]", first_page[0])
    page.click("form.filters button")
    assert page.locator("#sources tr td:first-child").all_inner_texts() == [first_page[0]]
    page.screenshot(path=str(SCREENSHOTS / "sources.png"), full_page=True)

    page.click("text=Domains")
    assert page.locator("#domains tr").count() >= 2
    page.click("text=Pipeline health")
    assert page.locator("#backlog").inner_text().strip() != ""
    page.screenshot(path=str(SCREENSHOTS / "health.png"), full_page=True)
    assert (SCREENSHOTS / "overview.png").stat().st_size > 5000


def test_another_customers_report_is_not_found_in_the_browser(browser, site):
    other = _sign_in(browser, site, site["token_b"])
    report_link = other.locator("a[href^='/reports/']").first.get_attribute("href")
    page = _sign_in(browser, site, site["token_a"])
    response = page.goto(site["url"] + report_link)
    assert response.status == 404
    assert site["b"] not in page.content()
    response = page.goto(site["url"] + "/api/overview?customer=" + site["b"])
    assert response.status == 200 and site["b"] not in page.content()


def test_services_marking_readiness_and_export_in_chromium(browser, site):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = _sign_in(browser, site, site["token_a"])
    page.click("header >> text=Services")
    row = page.locator("#services tr[data-service='Hetzner']")
    assert row.count() == 1 and "marked yours" not in row.inner_text()
    row.locator("button.mark").click()  # a form POST carrying the session's CSRF token
    page.wait_for_url(site["url"] + "/services")
    row = page.locator("#services tr[data-service='Hetzner']")
    for _ in range(100):  # the projections refresh after the response: the page shows it within seconds
        if "marked yours" in row.inner_text():
            break
        time.sleep(0.2)
        page.reload()
    assert "marked yours" in row.inner_text() and "authorized" in row.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "services.png"), full_page=True)

    page.click("header >> text=Policy readiness")
    assert page.locator("section.domain").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "readiness.png"), full_page=True)

    page.goto(site["url"] + "/sources?classification=authorized")
    ip = page.locator("#sources tr td:first-child a").first.inner_text()
    page.click(f"#sources a:text-is('{ip}')")  # one source: its DKIM and SPF results
    assert page.locator("h1").inner_text() == ip
    assert page.locator("#dkim tr").count() >= 2 and page.locator("#spf tr").count() >= 2
    page.screenshot(path=str(SCREENSHOTS / "source.png"), full_page=True)
    for view in ("reports", "reporters", "countries", "disagreements"):
        page.goto(site["url"] + "/more")
        page.click(f"main a[href='/{view}']")
        assert page.locator(f"table#{view}").count() == 1 or page.locator("#empty").count() == 1, view
    page.goto(site["url"] + "/sources?classification=authorized")
    with page.expect_download() as download:
        page.click("#export")
    text = Path(download.value.path()).read_text()
    assert text.startswith("source_ip,") and site["b"] not in text
    page.click("#sign-out")
    page.wait_for_url(site["url"] + "/login")
    assert page.goto(site["url"] + "/services").url.endswith("/login")


def test_a_window_and_a_domain_page_in_chromium(browser, site):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = _sign_in(browser, site, site["token_a"])
    assert page.locator("#window-label").inner_text() == "all time" and page.locator("#reports").inner_text() == "4"
    page.fill("#window input[name=from]", "2026-11-02")  # the reports' days: 11-01 (two), 11-02, 11-03
    page.fill("#window input[name=to]", "2026-11-03")
    page.click("#window button")
    assert page.locator("#window-label").inner_text() == "2026-11-02 → 2026-11-03"
    assert page.locator("#reports").inner_text() == "2"
    assert "vs the 2 days before" in page.locator("#messages-change").inner_text()
    page.click("header >> text=Domains")  # the session keeps the window from page to page
    assert page.locator("#window-label").inner_text() == "2026-11-02 → 2026-11-03"
    page.locator("#domains a").first.click()
    assert page.locator("h1#domain").count() == 1 and page.locator("svg.chart rect.bar").count() == 2
    # how current the figures are, whatever the window: the latest report (day 11-03) ends that day
    assert page.locator("#data-through").inner_text().startswith("Data through 2026-11-03 ")
    assert page.locator("#sources tr").count() >= 2 and page.locator("#reporters tr").count() >= 2
    page.screenshot(path=str(SCREENSHOTS / "domain.png"), full_page=True)
    page.click("#window a[data-window='7d']")  # a week before today: none of these reports
    assert page.locator("#window-label").inner_text().startswith("last 7 days")
    assert page.locator("#empty").count() == 1
    page.click("#window a[data-window='all']")
    assert page.locator("#window-label").inner_text() == "all time" and page.locator("#empty").count() == 0
