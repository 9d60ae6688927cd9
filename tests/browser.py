"""A real headless Chromium for the explorer's tests, driven over the DevTools protocol.

The system's browser (Debian's ``chromium``) is started; nothing is downloaded. A test that
needs it skips, saying why, where it is missing, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    """The system Chromium's path; skips the test (fails it under CI) without one."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    message = f"no system Chromium ({', '.join(BINARIES)}): apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Page:
    """One tab of a headless Chromium: navigate, evaluate JavaScript, move the mouse. Every
    uncaught page error and console error is kept in :attr:`errors`."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900):
        import websocket

        self._profile = tempfile.mkdtemp(prefix="dorl-chromium-")
        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--remote-debugging-port=0",
             "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
             f"--window-size={width},{height}", f"--user-data-dir={self._profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own process group: close() ends every helper too
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            url = match.group(1) if match else None
        if url is None:
            self.close()
            raise RuntimeError("Chromium did not open its DevTools endpoint")
        self._ws = websocket.create_connection(url, timeout=60)
        self._id = 0
        self.errors: list[str] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget",
                                   {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _call(self, method: str, params: dict | None = None, session: str | None = None):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        while True:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description")
                               or details.get("text", "page error"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                        for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])

    def send(self, method: str, params: dict | None = None):
        return self._call(method, params, self._session)

    def evaluate(self, expression: str):
        """The value of ``expression`` in the page (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: Path, ready: str, timeout: float = 30.0) -> None:
        """Load the file at ``path`` and wait until ``ready`` (JavaScript) is true."""
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_for(ready, timeout)

    def wait_for(self, condition: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{condition} still false after {timeout} s")
            time.sleep(0.02)

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        """One mouse event (``mouseMoved``, ``mousePressed``, ``mouseReleased``) at (x, y)."""
        params = {"type": kind, "x": x, "y": y, "buttons": buttons}
        if kind != "mouseMoved":
            params.update(button="left", clickCount=1)
        elif buttons:
            params["button"] = "left"
        self.send("Input.dispatchMouseEvent", params)

    def set_downloads(self, folder: Path) -> None:
        """Save the page's downloads into ``folder``."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._downloads = Path(folder)
        self._call("Browser.setDownloadBehavior", {"behavior": "allow",
                                                   "downloadPath": str(folder)})

    def downloaded(self, name: str, timeout: float = 10.0) -> Path:
        """The downloaded file ``name``, once it is complete."""
        path = self._downloads / name
        deadline = time.monotonic() + timeout
        while not path.is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no download {name} after {timeout} s")
            time.sleep(0.1)
        return path

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)
