"""Serving tests: start `yoda serve` apps on free loopback ports, in a thread of the test process (cheap:
torch is already imported) or in a forked process (real parallelism, and a real SIGKILL for the router
test). Test modules get the helpers through the session fixture `serve` (no sys.path games)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import httpx
import pytest
import torch
import uvicorn

from serve.build import ServeOptions, build_server

torch.set_num_threads(1)  # tiny tensors: threads only fight the other xdist worker (and forked servers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not become healthy in {timeout_s} s")


@contextmanager
def app_in_thread(app) -> Iterator[str]:
    """Serve a FastAPI app from a uvicorn thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_keep_alive=60))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn thread died")
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def server_in_thread(**options) -> Iterator[tuple[str, object]]:
    """(base URL, serve.server.Server) of a tiny CPU server running in this process."""
    server, app = build_server(ServeOptions(device="cpu", **options))
    with app_in_thread(app) as url:
        yield url, server


def _serve_forked(options: dict, port: int) -> None:
    _, app = build_server(ServeOptions(device="cpu", **options))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", timeout_keep_alive=60)


class ForkedServer:
    """A tiny CPU server in a forked child process (forked after torch is imported: starts in a second)."""

    def __init__(self, **options) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = multiprocessing.get_context("fork").Process(target=_serve_forked, args=(options, self.port),
                                                               daemon=True)

    def start(self) -> "ForkedServer":
        self.proc.start()
        return self

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(timeout=10)

    def __enter__(self) -> "ForkedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


@pytest.fixture(scope="session")
def serve() -> SimpleNamespace:
    return SimpleNamespace(free_port=free_port, wait_healthy=wait_healthy, app_in_thread=app_in_thread,
                           server_in_thread=server_in_thread, ForkedServer=ForkedServer)
