"""The dashboard in a real browser: `orch ui` as a user starts it, Debian's chromium driven
headless by selenium through the system chromedriver.

Each page is opened, its content and links checked, a job followed from the queue to its
page and its plot, the browser console checked for errors, and a screenshot saved under
``$ORCH_TEST_ARTIFACTS`` (else the test's tmp dir). Skipped where chromium, its driver or
selenium is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.states import JobState

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver "
                                "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("ORCH_TEST_ARTIFACTS")
    path = Path(where) / "ui" if where else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(served):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        driver.get(served.url)  # the printed URL: the token becomes a cookie
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def visit(driver, served, path: str, shots: Path, name: str):
    driver.get(served.base + path)
    time.sleep(0.3)  # let the page's script size the bars and read the log once
    driver.save_screenshot(str(shots / f"{name}.png"))
    errors = console_errors(driver)
    assert not errors, errors
    return driver


def test_the_printed_url_lets_the_browser_in_and_drops_the_token(browser, served):
    browser.get(served.url)
    assert "token=" not in browser.current_url
    assert browser.find_element(By.TAG_NAME, "h1").text == "Queue"


def test_another_browser_without_the_token_is_refused(served):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(served.base + "/")
    assert exc.value.code == 403


def test_queue_page_shows_every_state_and_filters(browser, served, shots, dashboard):
    visit(browser, served, "/", shots, "queue")
    states = {r.get_attribute("data-state") for r in browser.find_elements(By.CSS_SELECTOR, "tr.job")}
    assert states >= {s.value for s in JobState}
    note = browser.find_element(By.XPATH, f"//tr[td/a[text()='{dashboard.ids['queued'][:8]}']]/td[@class='note']")
    assert "laptop" in note.text  # why it waits
    lost = browser.find_element(By.XPATH, f"//tr[td/a[text()='{dashboard.ids['lost'][:8]}']]/td[@class='note']")
    assert "<img src=x onerror=alert(1)>" in lost.text  # shown as text, never run
    assert not browser.find_elements(By.CSS_SELECTOR, "td.note img")
    # the state filter submits itself on change
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.NAME, "state")).select_by_value("FAILED")
    _wait(lambda: "state=FAILED" in browser.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.job")
    assert [r.get_attribute("data-state") for r in rows] == ["FAILED"]
    assert not console_errors(browser)


def test_following_a_job_from_the_queue_to_its_page_and_its_plot(browser, served, shots, dashboard):
    visit(browser, served, "/?platform=lab&state=SUCCEEDED", shots, "queue-filtered")
    link = browser.find_element(By.LINK_TEXT, dashboard.ids["els"][:8])
    link.click()
    _wait(lambda: "/jobs/" in browser.current_url)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("els-pricer")
    img = browser.find_element(By.CSS_SELECTOR, ".images img")
    _wait(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 300  # the real PNG decoded
    result = browser.find_element(By.CSS_SELECTOR, "table.result").text
    assert "exit_code 0" in result
    log = browser.find_element(By.ID, "log")
    _wait(lambda: "price" in log.text.lower())
    bar = browser.find_element(By.CSS_SELECTOR, ".track .bar")
    assert bar.size["width"] > 0  # sized by the page's script (the CSP allows no inline style)
    browser.save_screenshot(str(shots / "job-els.png"))
    downloads = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.download")]
    assert any(h.endswith("els_pricer.png?download=1") for h in downloads)
    img.click()  # the plot on its own
    _wait(lambda: browser.current_url.endswith("els_pricer.png"))
    assert not console_errors(browser)


def test_job_page_of_a_job_that_moved_across_platforms(browser, served, shots, dashboard):
    visit(browser, served, f"/jobs/{dashboard.ids['lost']}", shots, "job-failover")
    lanes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".lane-label")]
    assert lanes == ["#1 kaggle", "#2 colab"]
    assert "kaggle → colab" in browser.find_element(By.CSS_SELECTOR, "dl.summary").text
    events = browser.find_element(By.CSS_SELECTOR, "table.attempts").text
    assert "placed on kaggle: est. 12m on T4" in events and "colab lost the run" in events


def test_running_job_page_follows_its_log(browser, served, shots, dashboard):
    visit(browser, served, f"/jobs/{dashboard.ids['running']}", shots, "job-running")
    _wait(lambda: "epoch 1" in browser.find_element(By.ID, "log").text)
    assert "following" in browser.find_element(By.ID, "log-status").text


def test_the_queue_refreshes_itself(browser, served, dashboard):
    from orchestrator.app import App

    browser.get(served.base + "/?state=PENDING")
    note = f"//tr[td/a[text()='{dashboard.ids['pending'][:8]}']]/td[@class='note']"
    assert browser.find_element(By.XPATH, note).text == ""
    app = App.open()
    try:  # what a tick on Kaggle would write while the page is open
        app.store.note(dashboard.ids["pending"], "kaggle: kernel queued behind 2 others")
    finally:
        app.close()
    _wait(lambda: "queued behind" in browser.find_element(By.XPATH, note).text, timeout=15)
    assert not console_errors(browser)


def test_quota_page_shows_bars_countdown_and_history(browser, served, shots):
    visit(browser, served, "/quota", shots, "quota")
    lab = browser.find_element(By.ID, "quota-lab")
    assert "of 30 GPU h" in lab.text
    countdown = lab.find_element(By.CSS_SELECTOR, ".countdown").text
    assert "(in " in countdown and "UTC" in countdown
    days = lab.find_elements(By.CSS_SELECTOR, ".chart .day")
    assert len(days) == 28 and max(d.size["height"] for d in days) > 40


def test_platforms_page_shows_health(browser, served, shots):
    visit(browser, served, "/platforms", shots, "platforms")
    names = [r.get_attribute("data-name") for r in browser.find_elements(By.CSS_SELECTOR, "tr.platform")]
    assert names == ["laptop", "lab"]
    assert "ready" in browser.find_element(By.CSS_SELECTOR, "tr.platform").text


def test_every_link_on_every_page_answers(browser, served):
    import urllib.request

    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    seen: set[str] = set()
    for path in ("/", "/quota", "/platforms", "/?state=active"):
        browser.get(served.base + path)
        for a in browser.find_elements(By.CSS_SELECTOR, "a[href]"):
            href = a.get_attribute("href")
            if href.startswith(served.base) and href not in seen:
                seen.add(href)
    assert len(seen) > 10
    for href in sorted(seen):
        req = urllib.request.Request(href, headers={"Cookie": cookie})
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 200, href


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # an element replaced by a refresh mid-read
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.1)
