"""What an on-call engineer sees in the Dagster UI, in a real browser: Debian's Chromium driven by Playwright.

The state is what a day of operation leaves: one pipeline synced by Dagster (its checks evaluated), another synced
from the CLI and reported by the sensor, both behind the ledger by a few logs. Screenshots land in build/ui/.
"""

from __future__ import annotations

import contextlib
import shutil

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from dagster_project.assets import PIPELINES, warehouse_sync
from dagster_project.resources import ExporterSecrets, LedgerDatabase
from ledger_pipelines.sync import sync_pipeline
from tests.dagster.ticks import sensor_tick
from tests.helpers import posting, send
from tests.webserver import ROOT, webserver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "build" / "ui"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def operated(dagster_db_url, dconn, make_pipeline, tmp_path):
    """A Dagster home holding what the UI should show, and the two pipelines."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster_project" / "dagster.yaml").read_text())
    synced_by_dagster = make_pipeline("shop", "realtime")
    synced_by_cli = make_pipeline("ops", "hourly")
    for i in range(4):
        send(dconn, "shop", posting("world", f"users:{i}", 100 + i))
        send(dconn, "ops", posting("world", f"teams:{i}", 10 + i))
    resources = {"ledger_db": LedgerDatabase(url=dagster_db_url), "exporter_secrets": ExporterSecrets()}
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        instance.add_dynamic_partitions(PIPELINES.name, [synced_by_dagster.name, synced_by_cli.name])
        assert dg.materialize([warehouse_sync], partition_key=synced_by_dagster.name, instance=instance,
                              resources=resources).success
        sync_pipeline(dagster_db_url, synced_by_cli.id, environ={}, trigger="cli")
        send(dconn, "shop", posting("world", "late", 1))
        send(dconn, "ops", posting("world", "late", 1))
        send(dconn, "ops", posting("world", "later", 1))
        tick = sensor_tick(instance, resources)
        for event in tick.asset_events:  # what the sensor daemon does with its tick's events
            instance.report_runless_asset_event(event)
    return home, synced_by_dagster, synced_by_cli


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)


def _open(page, url: str, *, first: bool = False) -> None:
    page.goto(url, wait_until="networkidle")
    if first:  # Dagster's community prompt shows once per browser profile, a moment after the page loads
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        with contextlib.suppress(PlaywrightTimeout):
            page.get_by_role("button", name="Skip").click(timeout=15_000)
    page.wait_for_timeout(1000)


def test_partitions_show_pipeline_names_lag_and_checks(dagster_db_url, operated):
    from playwright.sync_api import expect, sync_playwright

    home, by_dagster, by_cli = operated
    SHOTS.mkdir(parents=True, exist_ok=True)
    with webserver(dagster_db_url, home) as base, sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        # Which pipeline is this? Names, not ids, in the partition list; both materialized, whoever synced.
        _open(page, f"{base}/assets/warehouse/logs?view=partitions", first=True)
        for name in (by_dagster.name, by_cli.name):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        expect(page.get_by_text("Materialized (2)")).to_be_visible()
        expect(page.get_by_text("Missing (0)")).to_be_visible()
        page.get_by_text(by_cli.name, exact=True).first.click()
        details = page
        expect(details.get_by_text("trigger", exact=True)).to_be_visible()
        expect(details.get_by_text("cli", exact=True)).to_be_visible()  # synced from the CLI, reported as such
        expect(details.get_by_text("lag_after_run", exact=True)).to_be_visible()
        expect(details.get_by_text("duckdb-2 (duckdb)", exact=True)).to_be_visible()
        page.screenshot(path=str(SHOTS / "partition-synced-from-cli.png"), full_page=True)

        # How far behind is it now? The latest observation of the partition: lag and staleness.
        _open(page, f"{base}/assets/warehouse/logs?view=events&partition={by_cli.name}")
        page.get_by_text(by_cli.name).nth(1).click()  # the observation, newest first after the materialization
        expect(page.get_by_text("staleness_seconds", exact=True)).to_be_visible()
        expect(page.get_by_text("ledger_head", exact=True)).to_be_visible()
        page.screenshot(path=str(SHOTS / "partition-health.png"), full_page=True)

        # Check results, per pipeline.
        _open(page, f"{base}/assets/warehouse/balances?view=checks")
        expect(page.get_by_text("balances_match", exact=True).first).to_be_visible()
        expect(page.get_by_text("Passed").first).to_be_visible()
        expect(page.get_by_text(by_dagster.name, exact=True).first).to_be_visible()  # the check's partition
        page.screenshot(path=str(SHOTS / "checks.png"), full_page=True)

        # The ledger's head, per ledger.
        _open(page, f"{base}/assets/ledger/log")
        expect(page.get_by_text("last_log_id/ops", exact=True)).to_be_visible()
        expect(page.get_by_text("last_log_id/shop", exact=True)).to_be_visible()
        page.screenshot(path=str(SHOTS / "ledger-head.png"), full_page=True)
        browser.close()
