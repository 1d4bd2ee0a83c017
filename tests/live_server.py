"""A uvicorn server in a thread on 127.0.0.1 (a free port), for the serving tests."""

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
