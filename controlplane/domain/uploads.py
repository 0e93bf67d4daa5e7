"""Receiving a client-streamed upload into the blob store (entry points, plugin bundles)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..store.blobs import BlobStore
from .archives import UPLOAD_FIELD
from .errors import InvalidArgument

T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    path: Path  # the bytes, in a temporary file until the upload is kept
    digest: str
    size: int


@contextlib.asynccontextmanager
async def receive(
    blobs: BlobStore, chunks: AsyncIterator[bytes], max_bytes: int, expected_sha256: str, what: str
) -> AsyncIterator[Upload]:
    """Streams ``chunks`` to a temporary file, hashing and bounding them.

    The body inspects the upload; when it returns normally the bytes are kept in the blob
    store under their digest, and when it raises nothing is kept.
    """
    hasher = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=blobs.tmp_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidArgument(
                        f"the {what} is larger than the limit of {max_bytes} bytes",
                        field=UPLOAD_FIELD,
                    )
                hasher.update(chunk)
                f.write(chunk)
        if size == 0:
            raise InvalidArgument(f"the upload carried no {what} bytes", field=UPLOAD_FIELD)
        hexdigest = hasher.hexdigest()
        if expected_sha256 and expected_sha256.removeprefix("sha256:") != hexdigest:
            raise InvalidArgument(
                f"sha256 mismatch: the client said {expected_sha256}, the bytes hash to "
                f"{hexdigest} (the upload was damaged)",
                field="metadata.sha256",
            )
        upload = Upload(tmp, "sha256:" + hexdigest, size)
        yield upload
        await asyncio.to_thread(blobs.keep, tmp, upload.digest)
    finally:
        tmp.unlink(missing_ok=True)


class Inspector:
    """Runs the inspection of uploads off the event loop, at most ``concurrency`` at once
    (each holds up to archives.MAX_KEPT_BYTES), and remembers the digests it refused: the
    same refused bytes again cost a hash, not another walk through a bomb."""

    def __init__(self, concurrency: int = 2, remember: int = 1024) -> None:
        self.concurrency = concurrency
        self.remember = remember
        self._semaphore: asyncio.Semaphore | None = None
        self._refused: OrderedDict[str, InvalidArgument] = OrderedDict()

    async def run(self, digest: str, fn: Callable[[Path], T], path: Path) -> T:
        refused = self._refused.get(digest)
        if refused is not None:
            raise InvalidArgument.of(refused.violations)
        if self._semaphore is None:  # made on the loop that uses it
            self._semaphore = asyncio.Semaphore(self.concurrency)
        async with self._semaphore:
            try:
                return await asyncio.to_thread(fn, path)
            except InvalidArgument as exc:
                self._refused[digest] = exc
                while len(self._refused) > self.remember:
                    self._refused.popitem(last=False)
                raise
