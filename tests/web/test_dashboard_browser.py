"""The dashboard in a real headless Chromium, against a real local fleet (the control plane
and two agents as subprocesses of `fleet`, with API keys on): sign in with a key, see the
dataplanes by region, find a running job in the list with its dataplane, open its page and
read its attempts, the routing explanation and its log tail.

Screenshots go to the test's tmp dir and, when FLEET_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet.v1 import types_pb2

from fleet_cli.local_fleet import LocalFleet
from tests.fleet_waits import fleet_logs, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = [pytest.mark.e2e]
P = types_pb2
WAIT_S = 30

# Prints a few lines of "training", then works until the fleet stops it.
TRAIN = (
    "import time\n"
    "for epoch in range(1, 4):\n"
    "    print(f'epoch {epoch} loss {1 / epoch:.3f}', flush=True)\n"
    "time.sleep(300)\n"
)
POLICY = """\
version: 1
rules:
  - name: vision-on-prem-first
    match: {projects: [vision]}
    tiers: [reserved, spot]
default:
  tiers: [reserved, on_demand, spot]
"""


def pool_file(name: str, region: str, cloud: str, *pools: dict[str, Any]) -> dict[str, Any]:
    return {"dataplane": {"name": name, "region": region, "cloud": cloud}, "pools": list(pools)}


def pool(name: str, tier: str, model: str, count: int, memory: int) -> dict[str, Any]:
    return {"name": name, "purchase_type": tier, "gpu_model": model, "gpu_memory_gb": memory,
            "gpu_count": count, "price_per_gpu_hour": 1.5}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    # Not a skip: `make test` installs both (its `browser` target), so missing is an error.
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                    "/usr/bin/chromedriver): `make browser` installs them", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1440,1100",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: selenium-manager never downloads anything.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """The whole page (the window grows to its height), in tmp_path and FLEET_SCREENSHOT_DIR."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(900, min(int(height) + 140, 4000)))
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    wanted = os.environ.get("FLEET_SCREENSHOT_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(wanted) / name)
    return path


def test_the_dashboard_shows_the_fleet_and_a_placed_job_in_chromium(
    tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.5, auth=True) as fleet:
        fleet.start_control_plane()
        fleet.add_agent("onprem-dc1", pool_file(
            "onprem-dc1", "us-east-1", "onprem", pool("h100", "reserved", "H100", 8, 80)))
        fleet.add_agent("gcp-eu-spot", pool_file(
            "gcp-eu-spot", "europe-west4", "gcp", pool("l4", "spot", "L4", 4, 24)))
        with fleet.client(timeout_s=10) as client:
            wait_until(lambda: sum(bool(d.connected and d.pools)
                                   for d in client.list_dataplanes()) == 2,
                       60, "both agents to connect", fleet)
            client.apply_policy(POLICY, comment="vision runs on prem first")
            job = client.submit(P.JobSpec(
                project="vision", name="train-resnet",
                command=[sys.executable, "-c", TRAIN],
                resources=P.Resources(gpus=2, gpu_model="H100"),
            )).job
            wait_until(lambda: client.get(job.id).phase == P.JOB_PHASE_RUNNING,
                       60, "the job to run", fleet)

        driver = browser
        # The page re-renders as it refreshes: an element found a moment ago may be gone.
        wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException))

        def seen(what: str, check: Callable[[Any], Any]) -> Any:
            try:
                return wait.until(check, f"waiting for {what}")
            except Exception:
                screenshot(driver, tmp_path, "dashboard-failure.png")
                print(fleet_logs(fleet))
                raise

        def css(selector: str) -> Callable[[Any], Any]:
            def find(d: Any) -> Any:
                found = d.find_elements(By.CSS_SELECTOR, selector)
                return found[0] if found and found[0].is_displayed() else None
            return find

        # Sign in: the page asks for the key once and keeps it in this tab only.
        driver.get(fleet.http_url)
        seen("the sign-in form", css("#login-form"))
        driver.find_element(By.ID, "api-key").send_keys(fleet.admin_key)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        seen("the key's name", lambda d: "local-admin" in d.find_element(By.ID, "who").text)
        assert driver.execute_script("return sessionStorage.getItem('fleet.apiKey')") == (
            fleet.admin_key)
        assert fleet.admin_key not in driver.current_url

        # Dataplanes: one section per region, a card per dataplane, a bar per pool.
        on_prem = '[data-region="us-east-1"] [data-dataplane="onprem-dc1"]'
        seen("the on-prem dataplane", css(on_prem))
        seen("the spot dataplane",
             css('[data-region="europe-west4"] [data-dataplane="gcp-eu-spot"]'))
        card = seen("the job's GPUs taken", lambda d: (
            card if "6 / 8 free" in (card := d.find_element(By.CSS_SELECTOR, on_prem)).text
            else None))
        assert "healthy" in card.text and "reserved" in card.text.lower()
        screenshot(driver, tmp_path, "dashboard-dataplanes.png")

        # The job list, filtered by phase, shows the job with its dataplane.
        driver.get(fleet.http_url + "#/jobs?phase=running")
        row = seen("the job in the list", css(f'tr[data-job-id="{job.id}"]'))
        assert row.find_element(By.CSS_SELECTOR, "td.dataplane").text == "onprem-dc1"
        assert "running" in row.text and "train-resnet" in row.text
        screenshot(driver, tmp_path, "dashboard-jobs.png")

        # Its page: attempts, the routing explanation (every candidate with its reason), log.
        row.find_element(By.LINK_TEXT, job.id).click()
        attempt = seen("the attempt", css("#attempts tr[data-attempt-id]"))
        assert "onprem-dc1" in attempt.text and "h100" in attempt.text
        chosen = seen("the routing explanation",
                      css('#explanation tr[data-candidate="onprem-dc1/h100"]'))
        assert "chosen" in chosen.text
        candidates = driver.find_elements(By.CSS_SELECTOR, "#explanation tr[data-candidate]")
        assert {c.get_attribute("data-candidate") for c in candidates} == {
            "onprem-dc1/h100", "gcp-eu-spot/l4"}
        assert all(c.find_element(By.CSS_SELECTOR, "td.msg").text for c in candidates)
        assert "vision-on-prem-first" in driver.find_element(By.ID, "explanation").text
        seen("the log tail", lambda d: "epoch 3 loss 0.333" in d.find_element(By.ID, "log").text)
        shot = screenshot(driver, tmp_path, "dashboard-job.png")
        assert shot.stat().st_size > 10_000

        # The policy page: the version in force and its history.
        driver.get(fleet.http_url + "#/policy")
        document = seen("the policy document", css("#policy-document"))
        assert "vision-on-prem-first" in document.text
        assert "vision runs on prem first" in driver.find_element(By.ID, "policy-history").text
        screenshot(driver, tmp_path, "dashboard-policy.png")

        # No script errors and no Content-Security-Policy violations along the way.
        # (The first /api/whoami, before signing in, is answered 401 by design.)
        problems = [
            e for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "/api/whoami - " not in e["message"]
        ]
        assert problems == [], problems
