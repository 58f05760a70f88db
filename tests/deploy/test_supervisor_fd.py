"""deploy/supervisor/uvicorn_fd.py: the connections uvicorn accepts on fd 0 have Nagle off."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def uvicorn_fd() -> ModuleType:
    """Load deploy/supervisor/uvicorn_fd.py (a script beside supervisord's config, no package)."""
    path = REPO / "deploy" / "supervisor" / "uvicorn_fd.py"
    spec = importlib.util.spec_from_file_location("uvicorn_fd", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_set_nodelay_reaches_accepted_connections_and_keeps_the_descriptor() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = os.dup(listener.fileno())  # what supervisord hands over, as the process sees it
        uvicorn_fd().set_nodelay(fd)
        # Still open (a closed descriptor raises here): the socket is uvicorn's after the exec.
        with socket.socket(fileno=fd) as inherited:
            with socket.create_connection(listener.getsockname()):
                accepted, _ = inherited.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_without_it_an_accepted_connection_keeps_nagle_on() -> None:
    """The control: the kernel's default, which uvicorn's --fd leaves as it is."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


def test_supervisor_starts_uvicorn_through_it() -> None:
    config = (REPO / "deploy" / "supervisor" / "asgi.conf").read_text(encoding="utf-8")
    assert "uvicorn_fd.py project.asgi:application" in config
    assert "--fd 0" in config
