"""Tests for draw/outputs/live.py and the Bokeh pages of draw/outputs/klplot.py, in a real headless browser.

The browser is Chromium (Debian: `apt-get install -y chromium`), driven over the DevTools
protocol with tornado's websocket client (tornado comes with Bokeh). The tests load the page,
wait until Bokeh has built the document, read its data sources back from JavaScript and take a
screenshot to check that the plots were drawn, in their colours, with that data. Where no
browser is installed they skip, saying so.
"""
import asyncio
import base64
import io
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from bokeh.palettes import Category10
from PIL import Image
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from draw.outputs.klplot import save_html
from draw.outputs.live import LivePlot, samples_column

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome",
                                                 "google-chrome-stable") if shutil.which(name)),
               None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome found; "
                                   "install one with `apt-get install -y chromium`")
# waiting for a browser is not a timed assertion: the deadline only turns a hang into a failure
DEADLINE_S = 90
TRAIN_COLOR = np.array([int(Category10[10][0][i:i + 2], 16) for i in (1, 3, 5)])  # nll "train"
SAMPLE_COLOR = (255, 0, 255)

# the Bokeh document's sources, read back in the page (typed arrays made plain for JSON)
READ_SOURCES = """(() => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  const data = (name) => { const s = doc.get_model_by_name(name); return s ? s.data : null; };
  const curves = data('curves'), steps = data('kl_steps'), samples = data('samples');
  return {x: Array.from(curves.x), train: Array.from(curves.train_nll_bound),
          kl: Array.from(steps.kl), samples: samples ? samples.image.length : null,
          idle: doc.is_idle};
})()"""


def rows(n_epochs, T=4):
    """A log of n_epochs rows with every key the plots use, values known in closed form."""
    log = []
    for e in range(1, n_epochs + 1):
        row = {"epoch": e, "iteration": 50 * e, "train_nll_bound": 200.0 - 10 * e,
               "valid_nll_bound": 205.0 - 9 * e, "test_nll_bound": 206.0 - 9 * e,
               "train_total_gradient_norm": 10.0 / e, "train_total_step_norm": 0.5}
        row.update({f"train_kl_term_{t}": float(e * (t + 1)) for t in range(T)})
        log.append(row)
    return log


class Chromium:
    """A headless Chromium with a fresh profile, one page, and a DevTools connection."""

    def __init__(self, profile: Path):
        self.profile = profile
        self.process = None
        self.ws = None
        self.next_id = 0

    async def __aenter__(self):
        self.process = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--window-size=1100,1400", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + DEADLINE_S
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.process.poll() is None, "the browser exited at start"
            assert time.monotonic() < deadline, "the browser did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        listing = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/json/list")
        page = next(t for t in json.loads(listing.body) if t["type"] == "page")
        self.ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=1 << 28)
        return self

    async def __aexit__(self, *exc):
        if self.ws is not None:
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    async def send(self, method: str, **params):
        self.next_id += 1
        await self.ws.write_message(json.dumps({"id": self.next_id, "method": method,
                                                "params": params}))
        while True:                                  # skip the events that arrive in between
            message = json.loads(await self.ws.read_message())
            if message.get("id") == self.next_id:
                assert "error" not in message, message["error"]
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["result"].get("description")
        return result["result"].get("value")

    async def wait_for(self, expression: str, ready):
        """Evaluate until ready(value) holds; the last value."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            value = await self.evaluate(expression)
            if value is not None and ready(value):
                return value
            assert time.monotonic() < deadline, f"the page never got ready; last: {value}"
            await asyncio.sleep(0.2)

    async def screenshot(self) -> np.ndarray:
        shot = await self.send("Page.captureScreenshot", format="png")
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        return np.asarray(image).astype(int)                                  # (H, W, 3)


def count_color(pixels: np.ndarray, color, tolerance: int = 30) -> int:
    return int((np.abs(pixels - np.asarray(color)).sum(axis=-1) < tolerance).sum())


async def wait_for_drawing(browser: Chromium, color, at_least: int) -> np.ndarray:
    """Screenshots until `color` covers `at_least` pixels (the canvas draws asynchronously)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        pixels = await browser.screenshot()
        if count_color(pixels, color) >= at_least:
            return pixels
        assert time.monotonic() < deadline, f"{color} never drawn: {count_color(pixels, color)} px"
        await asyncio.sleep(0.3)


@needs_browser
def test_live_page_shows_log_and_samples_and_follows_updates(tmp_path):
    live = LivePlot(port=0)
    url = live.start()
    try:
        assert url == f"http://127.0.0.1:{live.port}/"
        samples = Image.new("RGB", (60, 40), SAMPLE_COLOR)
        live.update(rows(3), samples)

        async def scenario():
            async with Chromium(tmp_path / "profile") as browser:
                await browser.send("Page.navigate", url=url)
                data = await browser.wait_for(READ_SOURCES, lambda v: v["idle"] and v["x"])
                assert data["x"] == [1, 2, 3]
                assert data["train"] == [190.0, 180.0, 170.0]
                assert data["kl"] == [3.0, 6.0, 9.0, 12.0]                  # the latest epoch
                assert data["samples"] == 1
                pixels = await wait_for_drawing(browser, SAMPLE_COLOR, at_least=1000)
                assert count_color(pixels, TRAIN_COLOR) > 100               # the train curve
                # the next epoch reaches the open page without reloading it
                live.update(rows(4))
                # the nll and KL sources change in separate messages: wait for both
                data = await browser.wait_for(READ_SOURCES, lambda v: len(v["x"]) == 4
                                              and v["kl"] == [4.0, 8.0, 12.0, 16.0])
                assert data["train"][-1] == 160.0
                assert data["samples"] == 1                                 # kept from before

        asyncio.run(scenario())
    finally:
        live.close()


@needs_browser
def test_static_html_renders_nll_curves(tmp_path):
    path = tmp_path / "log.html"
    save_html(rows(5), path)
    html = path.read_text()
    assert "cdn.bokeh.org" not in html                # scripts inlined: opens without a network

    async def scenario():
        async with Chromium(tmp_path / "profile") as browser:
            await browser.send("Page.navigate", url=path.as_uri())
            data = await browser.wait_for(READ_SOURCES, lambda v: v["idle"] and v["x"])
            assert data["x"] == [1, 2, 3, 4, 5]
            assert data["train"] == [190.0, 180.0, 170.0, 160.0, 150.0]
            assert data["samples"] is None            # the static page has no sample grid
            await wait_for_drawing(browser, TRAIN_COLOR, at_least=100)

    asyncio.run(scenario())


def test_taken_port_warns_once_and_training_goes_on(capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        live = LivePlot(port=port)
        assert live.start() is None
        live.update(rows(2), Image.new("L", (4, 4)))    # no server: nothing happens, no error
        live.close()
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: live plotting is off")
    assert str(port) in err[0] and "training goes on" in err[0]


def test_update_without_a_browser_and_close_twice(capfd):
    live = LivePlot(port=0)
    url = live.start()
    live.update(rows(2))
    live.update(rows(2), Image.new("RGB", (3, 2)))
    with urllib.request.urlopen(url) as page:             # the page itself, without scripts run
        assert b"<title>DRAW live plots</title>" in page.read()
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(url + "no-such-page")
    live.close()
    live.close()
    again = LivePlot(port=live.port)                     # the port is free once closed
    assert again.start() == url
    again.close()
    # one line per start, and no request log lines in the middle of training's output
    assert capfd.readouterr().err.strip().splitlines() == [f"live plots at {url}"] * 2


def test_samples_column_packs_rgba_bottom_up():
    image = Image.new("RGB", (3, 2), (0, 0, 0))
    image.putpixel((2, 0), (10, 20, 30))                 # top right
    column = samples_column(image)
    packed = column["image"][0]
    assert packed.shape == (2, 3) and column["dw"] == [3] and column["dh"] == [2]
    # Bokeh's row 0 is the bottom row; each uint32 holds the bytes R, G, B, A in memory order
    assert packed[1, 2].tobytes() == bytes([10, 20, 30, 255])
    assert packed[0, 2].tobytes() == bytes([0, 0, 0, 255])
