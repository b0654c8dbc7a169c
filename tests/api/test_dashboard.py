"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a running
`rollguard up --with-router`: a bad deployment's incident seen from breach to verified, an
approval clicked, and a refused action shown with the decider's reason.

Set ROLLGUARD_TEST_SCREENSHOTS=DIR to keep the pages as PNGs (docs/images/ holds the ones the
README shows)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from benchmarks.live_up import LiveUp, until
from tests.conftest import HEAVY, TIME_FACTOR, scaled

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.async_api", reason="playwright is a dev dependency")

pytestmark = [
    pytest.mark.broker,
    HEAVY,
    pytest.mark.timeout(scaled(420)),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: make test installs Debian's chromium (apt-get install chromium)",
    ),
]
SHOTS = os.environ.get("ROLLGUARD_TEST_SCREENSHOTS")


async def shot(page: playwright.Page, name: str) -> None:
    if SHOTS:  # playwright makes the directory
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def test_an_incident_an_approval_and_a_refusal_seen_in_the_browser(tmp_path: Path) -> None:
    live = LiveUp(tmp_path, factor=TIME_FACTOR)
    async with live.running():
        await live.known_good()
        url = await until(
            lambda: live.log.named("listening") and live.api_url(), live.scaled(60), "no API"
        )
        sre = (await live.cli("tokens", "create", "--name", "alice", "--role", "sre")).split()[-1]
        lead = (
            await live.cli("tokens", "create", "--name", "dana", "--role", "data_engineering_lead")
        ).split()[-1]
        async with playwright.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(url)
            row = page.locator('tr[data-model="demo-model"]')
            await row.wait_for(timeout=scaled(30) * 1000)
            assert await row.locator("td.health").inner_text() == "no target"  # v1 only, live

            # A bad deployment: detected, rolled back and verified by rollguard itself; the
            # page shows the incident and its timeline, breach to verified.
            incident = await live.start_incident("browser")
            await live.finish(incident, live.scaled(120))
            link = page.locator("#incidents tr", has_text="verified").locator("a").first
            await link.wait_for(timeout=scaled(30) * 1000)
            await shot(page, "dashboard")
            await link.click()
            entries = page.locator("#entries li")
            await page.locator("#entries li", has_text="ack verified").wait_for(
                timeout=scaled(30) * 1000
            )
            kinds = [await e.get_attribute("data-kind") for e in await entries.all()]
            assert kinds[0] == "Breach" or "Breach" in kinds
            for kind in ("Breach", "Decision", "RollbackCommand", "CommandAck"):
                assert kind in kinds, kinds
            assert await page.locator("#timeline circle").count() == len(kinds)
            mttr = page.locator('[data-figure="mttr_s"] b')
            assert (await mttr.inner_text()).endswith(" s")
            await shot(page, "incident")

            # A refused action, with the decider's reason: v1 is live again and nothing else
            # is known good, so a manual rollback has nowhere to go.
            await page.goto(url)
            await page.fill("#token", sre)
            await page.select_option("#role", "sre")
            page.once("dialog", lambda d: d.accept("from the browser"))
            await row.locator('button[data-action="rollback"]').click()
            answer = page.locator("#answer")
            await page.wait_for_function(
                "document.querySelector('#answer').className === 'refused'",
                timeout=scaled(40) * 1000,
            )
            said = await answer.inner_text()
            assert "refused" in said and "no_known_good_target:" in said, said

            # An approval clicked: a level-3 rollback of another model waits for the
            # data_engineering_lead, whose click on the page launches it.
            for system, version, status in (("c1", "v1", "known_good"), ("c2", "v2", "live")):
                await live.cli(
                    *("deploy", "record", "--model-id", "churn", "--system-version", system),
                    *("--model", version, "--feature-pipeline", "f", "--config", "c"),
                    *("--infra", "i", "--status", status),
                )
            api = httpx.AsyncClient(base_url=url, timeout=scaled(60))
            for _ in range(int(scaled(60) / 0.3)):
                st = (await api.get("/api/models/churn")).json()
                if isinstance(st, dict) and st.get("status", {}).get("rollback_target"):
                    break
                await page.wait_for_timeout(300)
            asked = await api.post(
                "/api/models/churn/rollback",
                json={"role": "sre", "reason": "whole system", "level": 3},
                headers={"Authorization": f"Bearer {sre}"},
            )
            assert asked.status_code == 202, asked.text
            pending = asked.json()["decision"]["event_id"]
            approve = page.locator(f'tr[data-decision="{pending}"] button[data-action="approve"]')
            await approve.wait_for(timeout=scaled(30) * 1000)
            await page.fill("#token", lead)
            await page.select_option("#role", "data_engineering_lead")
            await shot(page, "approval")
            await approve.click()
            await page.wait_for_function(
                "['rollback', 'applied', 'verified'].includes(document.querySelector('#answer').className)",
                timeout=scaled(40) * 1000,
            )
            assert "level 3" in await answer.inner_text()
            await page.locator(f'tr[data-decision="{pending}"]').wait_for(
                state="detached", timeout=scaled(30) * 1000
            )
            await browser.close()
