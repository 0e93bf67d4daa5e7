"""Receiving a client-streamed upload into the blob store (entry points, plugin bundles)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..store.blobs import BlobStore
from .archives import UPLOAD_FIELD
from .errors import InvalidArgument


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
    fd, tmp_name = tempfile.mkstemp(dir=blobs.root / "tmp")
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
        target = blobs.path(upload.digest)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
