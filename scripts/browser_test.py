"""The API reference at /docs, driven in a real browser (chromium, through chromium-driver).

Run by scripts/browser-test.sh, which starts the real service with demo data; reads BASE_URL,
DEMO_KEY, DEMO_GROUP, DEMO_QUEUED_SCAN, CHROMIUM, CHROMEDRIVER and ARTIFACTS (where screenshots go).

Checks: `/` leads to the page, which renders the cancel operation; the Authorize dialog offers the
bearer key and the X-API-Key header; authorized with the demo key, "Try it out" cancels a queued
scan (by bearer) and a running one (by X-API-Key) and the page shows each 200 envelope; the API then
reports both scans cancelled; the browser made no request to another host, none failed, and logged
no error (a Content-Security-Policy violation would be one).
"""

import json
import os
import sys
import tempfile
import urllib.request
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

BASE_URL = os.environ["BASE_URL"]
KEY = os.environ["DEMO_KEY"]
GROUP = os.environ["DEMO_GROUP"]
QUEUED = os.environ["DEMO_QUEUED_SCAN"]
ARTIFACTS = os.environ["ARTIFACTS"]
CANCEL_PATH = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel"
# Swagger UI's id for an operation: its tag (spaces as underscores) and its operationId.
CANCEL_OPERATION = "operations-signal_scans-cancelSignalScan"
WAIT_SECONDS = 30


def start_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ["CHROMIUM"]
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={tempfile.mkdtemp(prefix='signal-scans-chromium-')}",
    ]:
        options.add_argument(flag)
    # "performance" carries the DevTools network events; "browser" the console.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(os.environ["CHROMEDRIVER"]), options=options)


def api(method: str, path: str) -> dict:
    request = urllib.request.Request(BASE_URL + path, method=method, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def authorize(driver: webdriver.Chrome, wait: WebDriverWait, scheme: str, key: str) -> None:
    """Opens the Authorize dialog, checks it offers both ways of sending the key, logs out of any
    scheme authorized before, and authorizes `scheme` with `key`."""
    driver.find_element(By.CSS_SELECTOR, ".scheme-container button.authorize").click()
    modal = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    forms = {form.find_element(By.CSS_SELECTOR, "h4 code").text: form for form in modal.find_elements(By.CSS_SELECTOR, ".auth-container")}
    assert set(forms) == {"bearerAuth", "apiKey"}, f"the dialog offers {sorted(forms)}"
    assert "X-API-Key" in forms["apiKey"].text, forms["apiKey"].text
    assert "Bearer" in forms["bearerAuth"].text, forms["bearerAuth"].text
    for name, form in forms.items():
        if name != scheme:
            for logout in form.find_elements(By.XPATH, ".//button[normalize-space()='Logout']"):
                logout.click()
    form = forms[scheme]
    form.find_element(By.CSS_SELECTOR, "input").send_keys(key)
    form.find_element(By.CSS_SELECTOR, "button.authorize").click()
    wait.until(lambda _: form.find_elements(By.XPATH, ".//button[normalize-space()='Logout']"))
    form.find_element(By.CSS_SELECTOR, "button.btn-done").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))


def try_cancel(operation: WebElement, wait: WebDriverWait, scan: str, previous: str, header: str) -> dict:
    """Fills the path parameters, executes the cancel, and returns the body the page shows for it
    once it shows a 200 whose request carried `header`."""
    for name, value in [("accountGroupId", GROUP), ("scanId", scan)]:
        field = operation.find_element(By.CSS_SELECTOR, f'tr[data-param-name="{name}"] input')
        field.clear()
        field.send_keys(value)
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()

    def shown(_):
        statuses = operation.find_elements(By.CSS_SELECTOR, ".live-responses-table tr.response td.response-col_status")
        bodies = operation.find_elements(By.CSS_SELECTOR, ".live-responses-table tr.response td.response-col_description pre")
        if not statuses or not bodies:
            return False
        try:
            body = json.loads(bodies[0].text)
        except ValueError:
            return False
        return (statuses[0].text.strip(), body) if body.get("data", {}) and body["data"].get("scanId") == scan else False

    status, body = wait.until(shown)
    curl = operation.find_element(By.CSS_SELECTOR, ".curl-command").text
    assert header in curl, f"the request did not send {header}: {curl}"
    assert status == "200", f"the page shows {status}: {body}"
    assert body["success"] is True and body["error"] is None, body
    assert body["data"]["status"] == "cancelled", body
    assert body["data"]["previousStatus"] == previous, body
    assert len(body["traceId"]) > 0, body
    return body


def check_network(driver: webdriver.Chrome) -> int:
    """Every request went to this service (or was a data: URL) and none failed; returns how many
    there were."""
    origin = urlsplit(BASE_URL)
    urls, problems = {}, []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            parts = urlsplit(url)
            if parts.scheme == "data":
                continue
            if (parts.scheme, parts.netloc) != (origin.scheme, origin.netloc):
                problems.append(f"a request to another host: {url}")
        elif message["method"] == "Network.loadingFailed":
            problems.append(f"a failed request: {urls.get(params['requestId'])}: {params.get('errorText')}")
        elif message["method"] == "Network.responseReceived":
            status = params["response"]["status"]
            if status >= 400:
                problems.append(f"{params['response']['url']} answered {status}")
    assert not problems, "\n".join(problems)
    return len(urls)


def main() -> int:
    os.makedirs(ARTIFACTS, exist_ok=True)
    for stale in ["docs-page.png", "docs-try-it-out-cancel.png", "docs-failure.png"]:
        if os.path.exists(os.path.join(ARTIFACTS, stale)):
            os.remove(os.path.join(ARTIFACTS, stale))
    driver = start_browser()
    wait = WebDriverWait(driver, WAIT_SECONDS)
    try:
        # Only the page's own traffic is logged from here on (not the browser's start page).
        driver.get("about:blank")
        driver.get_log("performance")
        driver.get_log("browser")

        driver.get(BASE_URL + "/")
        operation = wait.until(ec.presence_of_element_located((By.ID, CANCEL_OPERATION)))
        assert driver.current_url == BASE_URL + "/docs/", driver.current_url
        path = operation.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")
        assert path == CANCEL_PATH, path
        # The page links to nothing outside the service (it once linked the license to spdx.org).
        links = [link.get_attribute("href") or "" for link in driver.find_elements(By.CSS_SELECTOR, "a[href]")]
        outside = [href for href in links if href.startswith(("http:", "https:", "//")) and not href.startswith(BASE_URL)]
        assert not outside, f"the page links outside the service: {outside}"
        driver.save_screenshot(os.path.join(ARTIFACTS, "docs-page.png"))

        operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"#{CANCEL_OPERATION} .try-out__btn"))).click()

        authorize(driver, wait, "bearerAuth", KEY)
        by_bearer = try_cancel(operation, wait, QUEUED, "queued", f"Authorization: Bearer {KEY}")
        operation.screenshot(os.path.join(ARTIFACTS, "docs-try-it-out-cancel.png"))

        running = api("GET", f"/v1/accounts/{GROUP}/signals/scans?status=running")["data"]["scans"][0]["scanId"]
        authorize(driver, wait, "apiKey", KEY)
        try_cancel(operation, wait, running, "running", f"X-API-Key: {KEY}")

        # The page's word is checked against the API's.
        for scan in [QUEUED, running]:
            stored = api("GET", f"/v1/accounts/{GROUP}/signals/scans/{scan}")["data"]
            assert stored["status"] == "cancelled", stored
        assert api("GET", f"/v1/accounts/{GROUP}/signals/scans/{QUEUED}")["data"]["cancelledAt"] == by_bearer["data"]["cancelledAt"]

        requests = check_network(driver)
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, f"the browser logged errors: {errors}"
        print(
            f"browser test passed: {requests} requests, all to {BASE_URL}, none failed; screenshots in {ARTIFACTS}/"
        )
        return 0
    except Exception:
        driver.save_screenshot(os.path.join(ARTIFACTS, "docs-failure.png"))
        print(f"browser test failed; the page as it was: {ARTIFACTS}/docs-failure.png", file=sys.stderr)
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
