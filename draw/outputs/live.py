"""Live plots of a training run in the browser: a Bokeh server on localhost, in a background thread.

The classic repository pushed its plots to a separate `bokeh-server`; here the server lives
inside the training process. `LivePlot.start()` binds the port and serves the page from a daemon
thread with its own event loop; `update()` (called by the training loop after an epoch) only
stores the new numbers and asks every open page to redraw on the server's thread, so training
never waits for a browser, and nothing breaks when no browser is connected. A port that is
taken, or any other failure to serve, is one warning line: training goes on without the page.

The page shows the figures of `draw.outputs.klplot.log_figures` (nll bounds, gradient and step norms,
KL per step) and the latest sample grid.
"""
import asyncio
import sys
import threading
from functools import partial

import numpy as np
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure
from bokeh.server.server import BaseServer
from bokeh.server.tornado import BokehTornado
from bokeh.server.util import bind_sockets
from PIL import Image
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from draw.outputs.klplot import log_columns, log_figures

EMPTY_SAMPLES = {"image": [], "x": [], "y": [], "dw": [], "dh": []}


def samples_column(image: Image.Image) -> dict:
    """A PIL picture as the data of a Bokeh `image_rgba` glyph, one data unit per pixel."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)                 # (H, W, 4)
    # Bokeh puts row 0 at the bottom; packing 4 bytes into one uint32 is its RGBA format
    packed = np.ascontiguousarray(rgba[::-1]).view(np.uint32)[..., 0]        # (H, W)
    H, W = packed.shape
    return {"image": [packed], "x": [0], "y": [0], "dw": [W], "dh": [H]}


class LivePlot:
    """A Bokeh page on http://host:port/ that follows the training log. The default host serves
    this machine only; port 0 picks a free one (see the URL `start` returns)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5006):
        self.host = host
        self.port = port
        self.url: str | None = None
        self._lock = threading.Lock()
        self._columns, self._x_label = log_columns([])
        self._columns["samples"] = dict(EMPTY_SAMPLES)
        self._documents: dict = {}          # open pages: Document -> (sources, figures)
        self._loop: IOLoop | None = None
        self._server: BaseServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str | None:
        """Serve the page; return its URL, or None after a one-line warning. Never raises."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure),
                                        name="draw-live-plot", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            error = str(failure[0]).strip().splitlines()
            print(f"warning: live plotting is off, cannot serve on {self.host}:{self.port} "
                  f"({error[0] if error else type(failure[0]).__name__}); training goes on",
                  file=sys.stderr)
            return None
        print(f"live plots at {self.url}", file=sys.stderr)
        return self.url

    def _serve(self, ready: threading.Event, failure: list) -> None:
        """The server thread: bind, then run the event loop until `close`."""
        try:
            asyncio.set_event_loop(asyncio.new_event_loop())
            sockets, port = bind_sockets(self.host, self.port)
            # the browser's Origin header names the host it used, so allow both spellings of
            # this machine, on the port actually bound (port 0 is only known now)
            origins = [f"{name}:{port}" for name in {self.host, "localhost", "127.0.0.1"}]
            # log_function: tornado would print a line for every unknown URL a browser probes,
            # into the middle of the training's progress bar
            app = BokehTornado({"/": Application(FunctionHandler(self._make_document))},
                               extra_websocket_origins=origins, log_function=lambda handler: None)
            http = HTTPServer(app)
            http.add_sockets(sockets)
            self._loop = IOLoop.current()
            self._server = BaseServer(self._loop, app, http)
            self._server.start()
            self.port = port
            self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{port}/"
        except Exception as e:             # noqa: BLE001 - any failure only disables the page
            failure.append(e)
            ready.set()
            return
        ready.set()
        self._loop.start()
        self._loop.close(all_fds=True)

    def _make_document(self, doc) -> None:
        """Build one browser session's page from the latest data (server thread)."""
        with self._lock:
            columns = {name: dict(data) for name, data in self._columns.items()}
            x_label = self._x_label
        sources = {name: ColumnDataSource(data, name=name) for name, data in columns.items()}
        samples = figure(title="latest samples", width=520, height=320, match_aspect=True,
                         name="samples_figure", tools="pan,wheel_zoom,reset")
        samples.image_rgba("image", x="x", y="y", dw="dw", dh="dh", source=sources["samples"])
        samples.axis.visible = False
        samples.grid.visible = False
        figures = log_figures(sources, x_label)
        doc.add_root(gridplot(figures + [samples], ncols=2))
        doc.title = "DRAW live plots"
        with self._lock:
            self._documents[doc] = (sources, figures)
        doc.on_session_destroyed(lambda context: self._forget(doc))

    def _forget(self, doc) -> None:
        with self._lock:
            self._documents.pop(doc, None)

    def update(self, rows: list[dict], samples: Image.Image | None = None) -> None:
        """Show the whole training log so far, `rows` oldest first, and the latest sample grid
        (without `samples` the previous one stays); returns at once, never raises."""
        if self._server is None:
            return
        try:
            columns, x_label = log_columns(rows)
            if samples is not None:
                columns["samples"] = samples_column(samples)
        except Exception as e:             # noqa: BLE001 - a plot must never stop training
            print(f"warning: live plot not updated ({e})", file=sys.stderr)
            return
        with self._lock:
            self._columns.update(columns)
            self._x_label = x_label
            documents = list(self._documents)
        for doc in documents:
            # the one thread-safe way into a Bokeh document: run on the server's thread
            doc.add_next_tick_callback(partial(self._refresh, doc))

    def _refresh(self, doc) -> None:
        """Push the latest data into one page's sources (server thread)."""
        with self._lock:
            page = self._documents.get(doc)
            columns = {name: dict(data) for name, data in self._columns.items()}
            x_label = self._x_label
        if page is None:
            return
        sources, (nll, norms, _, heat) = page
        for name, data in columns.items():
            sources[name].data = data
        # rows logged every N batches are plotted over iterations rather than epochs
        nll.xaxis.axis_label = norms.xaxis.axis_label = heat.yaxis.axis_label = x_label

    def close(self) -> None:
        """Stop serving and end the thread; safe to call more than once, or without `start`."""
        if self._server is None:
            return
        server, loop, self._server = self._server, self._loop, None

        def stop():
            server.stop(wait=False)
            loop.stop()

        loop.add_callback(stop)
        self._thread.join(timeout=10)
        self._thread = None
