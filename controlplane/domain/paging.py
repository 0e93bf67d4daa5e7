"""Opaque, signed page tokens: a client cannot forge or reuse one for another query."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from .errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative (got {requested})", field="page_size"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def rekey(self, secret: bytes) -> None:
        """Signs with ``secret`` from now on (the shared one, read at start)."""
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def encode(self, query: str, cursor: Any) -> str:
        payload = json.dumps({"q": query, "c": cursor}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode().rstrip("=")

    def decode(self, query: str, token: str) -> Any:
        """The cursor from ``token``, or None for an empty token. ``query`` names the method
        and filter, so a token from another query is rejected too."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, payload = raw[:16], raw[16:]
            valid = hmac.compare_digest(mac, self._mac(payload))
            data = json.loads(payload) if valid else None
        except (ValueError, TypeError):
            valid, data = False, None
        if not valid or not isinstance(data, dict):
            raise InvalidArgument(
                "page_token is invalid (tampered with or truncated)", field="page_token"
            )
        if data.get("q") != query:
            raise InvalidArgument(
                "page_token belongs to a different query or filter", field="page_token"
            )
        return data.get("c")
