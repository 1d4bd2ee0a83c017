"""A uvicorn server in a thread on 127.0.0.1 (a free port), and a slowed model, for the serving tests."""

from __future__ import annotations

import threading
import time

import uvicorn


class LiveServer:
    """Serve `app` on loopback while the `with` block runs; stops (bounded) on exit.

    Attributes:
        url: http://127.0.0.1:PORT once started.
    """

    def __init__(self, app, start_timeout: float = 30.0) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=3
        )
        self.app, self.server, self.start_timeout = app, uvicorn.Server(config), start_timeout
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the test server did not stop within 30 s"


class SlowModel:
    """The real model with an optional gate before, and a pause after, every streamed token."""

    def __init__(self, model, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self._model, self.delay, self.gate, self.steps = model, delay, gate, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def stream(self, *args, **kwargs):
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        for step in self._model.stream(*args, **kwargs):
            self.steps += 1
            yield step
            time.sleep(self.delay)
