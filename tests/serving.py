"""Launching a Gradio app in-process for tests, on a port no other test run holds."""

from __future__ import annotations

import socket
from contextlib import contextmanager


def free_port() -> int:
    """An ephemeral port the OS just handed out (other test runs on this machine use 7860 and up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_on_free_port(demo, attempts: int = 3, **kwargs):
    """``demo.launch(prevent_thread_lock=True)`` on a free port, again on another if the port was taken meanwhile."""
    for attempt in range(attempts):
        try:
            return demo.launch(prevent_thread_lock=True, quiet=True, server_port=free_port(), **kwargs)
        except (OSError, ValueError):
            demo.close()
            if attempt == attempts - 1:
                raise


@contextmanager
def served_app(model: str):
    """(demo, gradio_client.Client) of ``build_app(model)`` with a store of its own, launched on a free port."""
    from gradio_client import Client

    from exbert_hub.app import AnalysisStore, build_app

    demo = build_app(model, store=AnalysisStore())
    launch_on_free_port(demo)
    try:
        yield demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()
