"""Drives the server's web page in headless Chromium over the DevTools protocol: opens
BASE/?prompt=…&autostart=1, waits until the page says the job completed, checks that previews
arrived and the result is shown, and saves a screenshot.

Usage: browser.py CHROMIUM BASE_URL SCREENSHOT.png
Prints one JSON line: {"state", "previews", "results", "seconds"}; exits non-zero on failure.
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

import websocket  # websocket-client

TIMEOUT = 120


def main():
    chromium, base, shot = sys.argv[1:4]
    profile = tempfile.mkdtemp(prefix="infinity-chromium-")
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--window-size=1200,760", "--remote-debugging-port=0", "--user-data-dir=" + profile, "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run(profile, base, shot)
    finally:
        browser.kill()
        browser.wait()


def run(profile, base, shot):
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.time() + 30
    while not (os.path.exists(port_file) and len(open(port_file).read().split()) >= 2):
        if time.time() > deadline:
            raise SystemExit("Chromium did not open its DevTools port")
        time.sleep(0.1)
    port, path = open(port_file).read().split()[:2]
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=TIMEOUT, suppress_origin=True)
    ids = iter(range(1, 1 << 30))

    def call(method, session=None, **params):
        msg = {"id": next(ids), "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        ws.send(json.dumps(msg))
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise SystemExit(f"{method}: {reply['error']}")
                return reply["result"]

    query = urllib.parse.urlencode({"prompt": "red apple", "seed": "7", "autostart": "1"})
    target = call("Target.createTarget", url=f"{base}/?{query}")["targetId"]
    session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def page(expression):
        return call("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    start = time.time()
    state = None
    while time.time() - start < TIMEOUT:
        state = page("document.body.dataset.state || ''")
        if state in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    # The result image is in the gallery once it has loaded.
    loaded = "Array.from(document.querySelectorAll('#gallery img')).filter(i => i.complete && i.naturalWidth > 0).length"
    while time.time() - start < TIMEOUT and page(loaded) == 0 and state == "completed":
        time.sleep(0.1)
    report = {
        "state": state,
        "previews": int(page("document.body.dataset.previews || '0'")),
        "results": page(loaded),
        "seconds": round(time.time() - start, 2),
    }
    png = base64.b64decode(call("Page.captureScreenshot", session, format="png")["data"])
    with open(shot, "wb") as f:
        f.write(png)
    print(json.dumps(report))
    if state != "completed":
        raise SystemExit(f"the page ended in state {state!r}")


if __name__ == "__main__":
    main()
