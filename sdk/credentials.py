"""Credentials for the SDK, the CLI and the agent: where a token comes from, how it is sent.

A token is found, first match wins, in:

1. the ``token=`` argument (``--token`` on the command line);
2. ``BRINELL_TOKEN``;
3. ``~/.brinell/credentials`` (JSON, mode 0600), written by ``brinell login``: a token per
   control-plane target, and a default;
4. for a control plane on this host (a loopback target), the bootstrap admin token that a
   server with the default data directory wrote at first start (``~/.brinell/server/admin.token``,
   readable only by the user who started it). This is what lets ``brinell server`` followed by
   any command just work for that user, with no login step.

It travels as ``authorization: Bearer TOKEN`` metadata on every call.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import grpc

ENV_TOKEN = "BRINELL_TOKEN"
ENV_TLS_CA = "BRINELL_TLS_CA"
ENV_TLS_CERT = "BRINELL_TLS_CERT"  # client certificate, for a server that wants mutual TLS
ENV_TLS_KEY = "BRINELL_TLS_KEY"


def brinell_home() -> Path:
    return Path.home() / ".brinell"


def credentials_file() -> Path:
    return brinell_home() / "credentials"


def default_admin_token_file() -> Path:
    return brinell_home() / "server" / "admin.token"


def is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_credentials() -> dict[str, Any]:
    try:
        data = json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_secret(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def resolve_token(target: str, token: str | None = None) -> str | None:
    """The token to use for ``target`` (see the module's docstring for the order)."""
    if token:
        return token
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    stored = _read_credentials()
    by_target = stored.get("targets")
    if isinstance(by_target, dict) and isinstance(by_target.get(target), str):
        return str(by_target[target])
    if isinstance(stored.get("default"), str):
        return str(stored["default"])
    if is_loopback(target):
        return _read_secret(default_admin_token_file())
    return None


def save_token(target: str, token: str, default: bool = False) -> Path:
    """Stores a token for ``target`` (and as the default) in ~/.brinell/credentials, 0600."""
    data = _read_credentials()
    targets = data.get("targets") if isinstance(data.get("targets"), dict) else {}
    assert isinstance(targets, dict)
    targets[target] = token
    data["targets"] = targets
    if default or "default" not in data:
        data["default"] = token
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(data, indent=2))
    return path


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` (and a newline) to ``path``, readable only by its owner (0600) from
    the first byte on, replacing any old file in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TLS(NamedTuple):
    """How a client verifies the server, and (mutual TLS) proves who it is."""

    ca: bytes | None = None  # None: the system's roots
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def load(
        cls, ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
    ) -> TLS:
        def read(p: str | Path | None) -> bytes | None:
            return Path(p).expanduser().read_bytes() if p else None

        if bool(cert) != bool(key):
            raise ValueError("a client certificate needs both its certificate and key files")
        return cls(read(ca), read(cert), read(key))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def tls_from(tls: bool | str | Path | TLS | None) -> TLS | None:
    """``Client(tls=...)``: None reads BRINELL_TLS_CA (unset: plaintext); True: TLS with the
    system's roots; a path: TLS verified against that CA file; False: plaintext. Except with
    False or a TLS value, BRINELL_TLS_CERT and BRINELL_TLS_KEY add a client certificate."""
    if isinstance(tls, TLS):
        return tls
    if tls is False:
        return None
    cert, key = os.environ.get(ENV_TLS_CERT), os.environ.get(ENV_TLS_KEY)
    if tls is None:
        ca = os.environ.get(ENV_TLS_CA)
        return TLS.load(ca, cert, key) if ca or cert else None
    return TLS.load(None if tls is True else tls, cert, key)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the bearer token to every call of a (sync) channel."""

    def __init__(self, token: str) -> None:
        self._metadata = auth_metadata(token)

    def _details(self, d: Any) -> _Details:
        return _Details(
            d.method,
            d.timeout,
            (*(d.metadata or ()), *self._metadata),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def open_channel(
    target: str,
    token: str | None,
    tls: TLS | None,
    options: list[tuple[str, Any]],
) -> grpc.Channel:
    """A sync channel that sends ``token`` on every call, over TLS when ``tls`` is given."""
    channel = (
        grpc.secure_channel(target, tls.channel_credentials(), options=options)
        if tls is not None
        else grpc.insecure_channel(target, options=options)
    )
    return grpc.intercept_channel(channel, _BearerInterceptor(token)) if token else channel
