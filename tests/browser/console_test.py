#!/usr/bin/env python3
"""Drives the signet web console in headless Chromium (Debian's chromium and
chromium-driver, through python3-selenium) against a running server.

Run by tests/it/console.rs, which starts the server and prepares keys:
  console_test.py URL OPERATOR_TOKEN ORG_TOKEN VICTIM_ID VICTIM_TOKEN DOWNLOAD_DIR [SCREENSHOT_DIR]
ORG_TOKEN is an OWNER token of organisation `globex`; VICTIM_ID a key of
`acme` whose token is VICTIM_TOKEN. Prints `RESULT {json}` last; exits
non-zero on the first failed check.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

URL, OPERATOR, ORG_TOKEN, VICTIM_ID, VICTIM_TOKEN, DOWNLOADS = sys.argv[1:7]
SHOTS = sys.argv[7] if len(sys.argv) > 7 else None
STEP = "start"


def step(name):
    global STEP
    STEP = name
    print(f"-- {name}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(f"{STEP}: {what}")


def api(method, path, token=OPERATOR, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def eventually(cond, what, timeout=15):
    """Polls `cond` (the API's view of an action's effect) until it holds."""
    deadline = time.time() + timeout
    while True:
        try:
            if cond():
                return
        except AssertionError:
            pass
        if time.time() > deadline:
            raise AssertionError(f"{STEP}: {what} (not within {timeout}s)")
        time.sleep(0.2)


def keys_of(org):
    status, body = api("GET", f"/v1/organisations/{org}/keys")
    check(status == 200, f"list {org}: {status} {body}")
    return {k["id"]: k for k in body["keys"]}


def verify(token):
    return api("POST", "/v1/verify", token=None, body={"token": token})[1]


def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": DOWNLOADS,
        "download.prompt_for_download": False,
    })
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(service=service, options=options)
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": DOWNLOADS})
    return d


D = None


def wait(cond, timeout=15):
    # A re-render replaces elements: a stale one is looked up again.
    return WebDriverWait(D, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(cond)


def button(name, within=None):
    """The visible, enabled button whose text or aria-label is `name`."""
    root = within or D
    def find(_):
        for b in root.find_elements(By.TAG_NAME, "button"):
            if (b.text.strip() == name or b.get_attribute("aria-label") == name) and b.is_displayed() and b.is_enabled():
                return b
        return False
    return wait(find)


def row_button(name, key_id):
    row = wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-key="{key_id}"]')))
    for b in row.find_elements(By.TAG_NAME, "button"):
        if b.text.strip() == name:
            return b
    raise AssertionError(f"{STEP}: no {name} button on key {key_id}")


def labelled(text, within=None):
    """The control of the <label> reading `text`."""
    root = within or D
    for label in root.find_elements(By.TAG_NAME, "label"):
        if label.text.strip() == text and label.is_displayed():
            return D.find_element(By.ID, label.get_attribute("for"))
    raise AssertionError(f"{STEP}: no label {text!r}")


def section(org):
    return wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'section.org[data-org="{org}"]')))


def dialog():
    return wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "dialog[open][role=alertdialog], dialog[open][role=dialog]")))


def settle():
    """Waits until no request or render of the page is in flight (the page
    counts them on <body data-busy>), three looks in a row."""
    quiet = [0]

    def idle(d):
        now = d.execute_script("return document.readyState === 'complete' && (document.body.dataset.busy || '0') === '0'")
        quiet[0] = quiet[0] + 1 if now else 0
        return quiet[0] >= 3

    WebDriverWait(D, 15, poll_frequency=0.1).until(idle)


def error_text():
    return D.find_element(By.ID, "error").text


def sign_in(token):
    step("sign in")
    field = labelled("Token")
    field.clear()
    field.send_keys(token)
    button("Sign in").click()
    wait(EC.visibility_of_element_located((By.ID, "app")))
    button("Sign out")
    settle()


def sign_out():
    button("Sign out").click()
    wait(EC.visibility_of_element_located((By.ID, "sign-in")))


def storage_holds_no_token(tokens):
    step("the token is never in web storage or cookies")
    dump = D.execute_script(
        "const o = {}; for (let i = 0; i < localStorage.length; i++) { const k = localStorage.key(i); o['l:' + k] = localStorage.getItem(k); }"
        " for (let i = 0; i < sessionStorage.length; i++) { const k = sessionStorage.key(i); o['s:' + k] = sessionStorage.getItem(k); }"
        " return {storage: JSON.stringify(o), local: localStorage.length, cookie: document.cookie};")
    check(dump["local"] == 0, f"localStorage holds {dump}")
    check(dump["cookie"] == "", f"document.cookie is {dump['cookie']!r}")
    check(D.get_cookies() == [], f"cookies: {D.get_cookies()}")
    for t in tokens:
        check(t not in dump["storage"], "a token is in web storage")
    check(all(t not in D.current_url for t in tokens), "a token is in the URL")


def same_origin_only():
    step("no request to another origin")
    entries = D.execute_script("return performance.getEntries().map(e => e.name)")
    origin = URL.rstrip("/")
    foreign = [n for n in entries if n.startswith("http") and not n.startswith(origin)]
    check(not foreign, f"requests to other origins: {foreign}")
    for entry in D.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            check(url.startswith(origin) or url.startswith("blob:") or url.startswith("data:"),
                  f"request to {url}")


def shot(name):
    if SHOTS:
        D.save_screenshot(os.path.join(SHOTS, name))


def main():
    global D
    D = driver()
    result = {}
    try:
        step("open the console")
        D.get(URL + "/console")
        check("signet" in D.title, D.title)
        button("Sign in")
        shot("sign-in.png")

        step("a wrong token shows the API's message")
        labelled("Token").send_keys("not-the-token")
        button("Sign in").click()
        wait(lambda d: error_text() != "")
        check("operator token" in error_text(), error_text())

        sign_in(OPERATOR)
        shot("overview.png")
        check("operator" in D.find_element(By.ID, "who").text, "who")
        acme = section("acme")
        headers = [th.text for th in acme.find_elements(By.CSS_SELECTOR, "table.keys th")]
        for h in ("Name", "Algorithm", "State", "ID", "Created", "Expires", "Origin", "Usage"):
            check(h in headers, f"column {h} in {headers}")
        check(acme.find_element(By.CSS_SELECTOR, f'tr[data-key="{VICTIM_ID}"]'), "victim listed")
        time_el = acme.find_element(By.CSS_SELECTOR, f'tr[data-key="{VICTIM_ID}"] time')
        check(time_el.get_attribute("title").endswith("(UTC)"), "UTC on hover")
        status = D.find_element(By.ID, "status-text").text
        check("ready" in status, status)
        cluster = D.find_element(By.CSS_SELECTOR, "table.cluster").text
        check("instance (this one)" in cluster and "live" in cluster, cluster)
        storage_holds_no_token([OPERATOR])

        step("audit chain and JWK Set are shown")
        summary = acme.find_element(By.CSS_SELECTOR, "details.audit summary")
        check("chain verifies" in summary.text, summary.text)
        summary.click()
        check("The audit chain verifies" in acme.text, "verdict shown")

        step("create a key and download its private key")
        before = set(keys_of("acme"))
        labelled("Name", acme).send_keys("console key")
        Select(labelled("Algorithm", acme)).select_by_visible_text("ES256")
        button("Create key", acme).click()
        secret = wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "#secret[open]")))
        check("will not be shown again" in secret.text, secret.text)
        wait(lambda d: "BEGIN PRIVATE KEY" in D.find_element(By.ID, "secret-pem").get_attribute("value"))
        pem = D.find_element(By.ID, "secret-pem").get_attribute("value")
        check("BEGIN PRIVATE KEY" in pem, "the private key is shown")
        after = keys_of("acme")
        created = [k for k in after if k not in before]
        check(len(created) == 1, f"one key created: {created}")
        created = created[0]
        check(after[created]["algorithm"] == "ES256" and after[created]["name"] == "console key", after[created])
        shot("create.png")
        button("Download private key").click()
        path = os.path.join(DOWNLOADS, f"{created}.pem")
        deadline = time.time() + 15
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.2)
        check(os.path.exists(path), f"{path} downloaded: {os.listdir(DOWNLOADS)}")
        with open(path) as f:
            check(f.read() == pem, "the download is the key shown")
        result["created"] = created
        button("Close").click()
        settle()
        check(D.find_element(By.ID, "secret-pem").get_attribute("value") == "", "the key is dropped on close")
        storage_holds_no_token([OPERATOR, pem.strip().splitlines()[1]])

        step("upload an RSA public key, pasted, with the scheme it signs with")
        status, jwks = api("GET", f"/v1/keys/{VICTIM_ID}")
        check(status == 200, "victim public key")
        acme = section("acme")
        labelled("Name", acme.find_element(By.CSS_SELECTOR, "form[aria-label^='Upload']")).send_keys("uploaded key")
        upload_area = labelled("Public key (SPKI PEM or JWK)", acme)
        # The organisation cannot hold one key twice: paste another org's key.
        status, globex = api("GET", "/v1/organisations/globex/keys")
        pub = next(k for k in globex["keys"] if k["algorithm"] == "RS256")["publicKey"]
        D.execute_script("arguments[0].value = arguments[1]", upload_area, pub)
        Select(labelled("Signature scheme of an RSA key", acme)).select_by_value("PS256")
        button("Upload key", acme).click()
        eventually(lambda: any(k["name"] == "uploaded key" for k in keys_of("acme").values()), "uploaded")
        uploaded = [k for k in keys_of("acme").values() if k["name"] == "uploaded key"]
        check(len(uploaded) == 1 and uploaded[0]["origin"] == "uploaded", f"uploaded: {uploaded}")
        check(uploaded[0]["algorithm"] == "PS256", f"the scheme chosen: {uploaded}")
        result["uploaded"] = uploaded[0]["id"]
        settle()

        step("upload errors show the API's message")
        acme = section("acme")
        labelled("Name", acme.find_element(By.CSS_SELECTOR, "form[aria-label^='Upload']")).send_keys("again")
        upload_area = labelled("Public key (SPKI PEM or JWK)", acme)
        D.execute_script("arguments[0].value = arguments[1]", upload_area, pub)
        button("Upload key", acme).click()
        wait(lambda d: "already key" in error_text())

        step("rename")
        row_button("Rename", result["uploaded"]).click()
        d = dialog()
        name = labelled("New name", d)
        name.clear()
        name.send_keys("renamed key")
        button("Confirm", d).click()
        eventually(lambda: keys_of("acme")[result["uploaded"]]["name"] == "renamed key", "renamed")
        settle()

        step("cancel in a confirmation dialog changes nothing")
        row_button("Delete", VICTIM_ID).click()
        d = dialog()
        check(d.get_attribute("role") == "alertdialog", "role alertdialog")
        focused = D.switch_to.active_element
        check(focused.get_attribute("id") == "confirm-no", f"focus starts on Cancel: {focused.text!r}")
        check("Verified in the last hour" in d.text and "Last verified" in d.text, d.text)
        button("Cancel", d).click()
        settle()
        check(VICTIM_ID in keys_of("acme"), "still there after Cancel")
        row_button("Disable", VICTIM_ID).click()
        dialog()
        D.switch_to.active_element.send_keys(Keys.ESCAPE)
        settle()
        check(keys_of("acme")[VICTIM_ID]["state"] == "active", "still active after Escape")

        step("disable: the key's token is refused")
        check(verify(VICTIM_TOKEN)["valid"] is True, "victim token valid first")
        row_button("Disable", VICTIM_ID).click()
        d = dialog()
        usage = d.find_element(By.ID, "confirm-usage").text
        check("Verified in the last hour" in usage, usage)
        # The victim's token verified just now: the dialog's usage is fresh.
        hour = d.find_elements(By.CSS_SELECTOR, "#confirm-usage dd")[0].text
        check(hour != "0", f"verifiedLastHour in the dialog: {usage}")
        check("never" not in usage, f"lastVerifiedAt in the dialog: {usage}")
        shot("confirm-disable.png")
        button("Confirm", d).click()
        eventually(lambda: keys_of("acme")[VICTIM_ID]["state"] == "disabled", "disabled")
        settle()
        refused = verify(VICTIM_TOKEN)
        check(refused["valid"] is False and refused["error"]["code"] == "key_disabled", refused)

        step("enable")
        row_button("Enable", VICTIM_ID).click()
        eventually(lambda: keys_of("acme")[VICTIM_ID]["state"] == "active", "enabled")
        settle()
        check(verify(VICTIM_TOKEN)["valid"] is True, "valid again")

        step("rotate with a grace period")
        before = set(keys_of("acme"))
        row_button("Rotate", result["created"]).click()
        d = dialog()
        grace = labelled("Grace period (seconds)", d)
        grace.clear()
        grace.send_keys("3600")
        button("Confirm", d).click()
        secret = wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "#secret[open]")))
        check("will not be shown again" in secret.text, "rotation shows the key once")
        after = keys_of("acme")
        successor = [k for k in after if k not in before]
        check(len(successor) == 1, f"one successor: {successor}")
        result["successor"] = successor[0]
        check(after[result["created"]]["expiresAt"] is not None, "the old key retires")
        button("Download private key").click()
        path = os.path.join(DOWNLOADS, f"{successor[0]}.pem")
        deadline = time.time() + 15
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.2)
        check(os.path.exists(path), "successor downloaded")

        step("leaving the page forgets the key shown and the token")
        D.get(URL + "/readyz")
        D.back()
        wait(EC.visibility_of_element_located((By.ID, "sign-in")))
        check(not D.execute_script("return document.getElementById('secret').open"), "no dialog after Back")
        check(D.find_element(By.ID, "secret-pem").get_attribute("value") == "", "no key after Back")
        check(D.execute_script("return document.getElementById('orgs').children.length") == 0,
              "signed out after Back")
        sign_in(OPERATOR)

        step("an error shows the API's message")
        acme = section("acme")
        labelled("Name", acme).send_keys("one too many")
        button("Create key", acme).click()
        wait(lambda d: "Maximum number of organisation keys" in error_text())
        shot("desktop.png")

        step("delete")
        row_button("Delete", result["uploaded"]).click()
        d = dialog()
        button("Confirm", d).click()
        eventually(lambda: result["uploaded"] not in keys_of("acme"), "deleted")
        settle()
        check(D.execute_script("return document.activeElement !== document.body"),
              "focus stays in the page after the row is gone")

        step("organisations differing only in punctuation have their own ids, each shown once")
        for org in ("x.y", "x_y", "x.y"):
            field = labelled("Organisation")
            field.clear()
            field.send_keys(org)
            button("Open").click()
            section(org)
            settle()
        shown = [s.get_attribute("data-org") for s in D.find_elements(By.CSS_SELECTOR, "section.org")]
        check(shown.count("x.y") == 1 and shown.count("x_y") == 1, f"each shown once: {shown}")
        ids = D.execute_script("return Array.from(document.querySelectorAll('[id]'), e => e.id)")
        check(len(ids) == len(set(ids)), f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        for org in ("x.y", "x_y"):
            sec = section(org)
            control = labelled("Name", sec)
            check(D.execute_script("return arguments[0].contains(arguments[1])", sec, control),
                  f"the Name label of {org} names its own field")

        step("keyboard only: Tab reaches Sign out and the dialog buttons")
        row_button("Delete", VICTIM_ID).send_keys(Keys.ENTER)
        d = dialog()
        active = D.switch_to.active_element
        check(active.tag_name in ("input", "button"), f"focus in dialog: {active.tag_name}")
        D.switch_to.active_element.send_keys(Keys.ESCAPE)
        settle()
        check(VICTIM_ID in keys_of("acme"), "escape cancels")

        step("with signet out of reach, the page says so in its own words")
        D.execute_cdp_cmd("Network.enable", {})
        offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        D.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
        button("Refresh").click()
        wait(lambda d: "did not answer" in d.find_element(By.ID, "status-text").text)
        labelled("Name", section("acme")).send_keys("unreachable")
        button("Create key", section("acme")).click()
        wait(lambda d: "did not answer" in error_text())
        check("Failed to fetch" not in error_text(), error_text())
        online = dict(offline, offline=False)
        D.execute_cdp_cmd("Network.emulateNetworkConditions", online)
        button("Refresh").click()
        wait(lambda d: "This instance is ready" in d.find_element(By.ID, "status-text").text)
        settle()

        step("layout at 360 px")
        D.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 360, "height": 780, "deviceScaleFactor": 2, "mobile": True})
        D.refresh()
        sign_in(OPERATOR)
        width = D.execute_script("return document.scrollingElement.scrollWidth")
        check(width <= 360, f"page scrolls sideways: scrollWidth {width}")
        table = section("acme").find_element(By.CSS_SELECTOR, "table.keys")
        D.execute_script("arguments[0].scrollIntoView()", table)
        check(table.is_displayed(), "the key table is shown")
        wrap = section("acme").find_element(By.CSS_SELECTOR, ".table-wrap")
        check(wrap.rect["width"] <= 360, f"the table's box fits: {wrap.rect}")
        if SHOTS:
            D.execute_script("window.scrollTo(0, 0)")
            shot("phone.png")
            D.execute_script("arguments[0].scrollIntoView()", table)
            shot("phone-keys.png")
        delete = row_button("Delete", VICTIM_ID)
        D.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", delete)
        check(delete.is_displayed(), "row buttons reachable")
        right = D.execute_script("return arguments[0].getBoundingClientRect().right", delete)
        check(right <= 360, f"the Delete button is within the screen: {right}")
        width = D.execute_script("return document.scrollingElement.scrollWidth")
        check(width <= 360, f"page scrolls sideways after scrolling to a key: {width}")
        delete.click()
        d = dialog()
        check(d.rect["width"] <= 360, f"the dialog fits: {d.rect}")
        button("Cancel", d).click()
        settle()
        D.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        sign_out()

        step("sign in with an organisation token")
        sign_in(ORG_TOKEN)
        who = D.find_element(By.ID, "who").text
        check("globex" in who, who)
        orgs = [s.get_attribute("data-org") for s in D.find_elements(By.CSS_SELECTOR, "section.org")]
        check(orgs == ["globex"], f"only its own organisation: {orgs}")
        storage_holds_no_token([OPERATOR, ORG_TOKEN])
        same_origin_only()
        sign_out()
        check(D.execute_script("return document.getElementById('orgs').children.length") == 0, "forgotten")
        storage_holds_no_token([OPERATOR, ORG_TOKEN])
        same_origin_only()

        logs = [e for e in D.get_log("browser") if e["level"] == "SEVERE" and "Content Security Policy" in e["message"]]
        check(not logs, f"CSP violations: {logs}")
    except Exception:
        if SHOTS is None:
            try:
                D.save_screenshot(os.path.join(DOWNLOADS, "failure.png"))
                print(f"failure screenshot: {os.path.join(DOWNLOADS, 'failure.png')}")
            except WebDriverException:
                pass
        raise
    finally:
        D.quit()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
