"""Which optional extra a part of Brinell needs, said in one line when it is missing.

The bare ``pip install brinell`` is the SDK client (grpcio, protobuf, PyYAML); the command line
wants ``[cli]``, the control plane ``[server]``, the agent ``[agent]``. A missing one is a
setup step, not a bug: the user gets the pip command, not a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["needs"]


@contextmanager
def needs(extra: str, what: str) -> Iterator[None]:
    """Turns a missing third-party module inside the block into one line on stderr and exit
    status 1: ``brinell server needs grpc_health, which is not installed: pip install
    'brinell[server]'``. A missing module of Brinell itself is a broken install: re-raised."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if not top or top == "brinell":
            raise
        sys.exit(f"{what} needs {top}, which is not installed: pip install 'brinell[{extra}]'")
