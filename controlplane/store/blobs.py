"""Content-addressed blob stores (entry-point archives, plugin bundles).

``BlobStore`` keeps blobs on the local disk (one control plane). ``SharedBlobStore`` keeps
them in the database, so that every replica on one PostgreSQL serves every blob, with the
local disk as a read-through cache. All methods block: call them off the event loop.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError

from .db import Database
from .models import BlobChunkRow, BlobRow

CHUNK = 1 << 20
B = cast(Table, BlobRow.__table__)
BC = cast(Table, BlobChunkRow.__table__)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        return self.root / algo / hexdigest[:2] / hexdigest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def keep(self, tmp: Path, digest: str) -> None:
        """Moves the finished file ``tmp`` (in tmp_dir, hashing to ``digest``) into the store."""
        target = self.path(digest)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)

    def put(self, data: bytes) -> str:
        """Stores ``data`` (atomically: temp file + rename) and returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.keep(Path(tmp), digest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return digest

    def open(self, digest: str) -> tuple[int, Iterator[bytes]] | None:
        """The blob's size and its bytes in chunks, or None when it is not stored."""
        path = self.path(digest)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return None
        return os.fstat(f.fileno()).st_size, _chunks(f)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


class SharedBlobStore(BlobStore):
    """Blobs in the database (1 MiB rows), cached under ``root``."""

    def __init__(self, root: Path, db: Database) -> None:
        super().__init__(root)
        self.db = db

    def _stored(self, digest: str) -> bool:
        with self.db.session() as s:
            return s.execute(select(B.c.size).where(B.c.digest == digest)).first() is not None

    def exists(self, digest: str) -> bool:
        return super().exists(digest) or self._stored(digest)

    def keep(self, tmp: Path, digest: str) -> None:
        if not self._stored(digest):
            try:
                with self.db.session() as s, tmp.open("rb") as f:
                    size, seq = 0, 0
                    while chunk := f.read(CHUNK):
                        s.execute(insert(BC).values(digest=digest, seq=seq, data=chunk))
                        size += len(chunk)
                        seq += 1
                    s.execute(insert(B).values(digest=digest, size=size))
            except IntegrityError:
                pass  # another replica stored the same bytes first
        super().keep(tmp, digest)

    def open(self, digest: str) -> tuple[int, Iterator[bytes]] | None:
        found = super().open(digest)
        if found is not None or not self._stored(digest):
            return found
        # Fetched once into the local cache, a chunk at a time.
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out, self.db.session() as s:
                # A few rows at a time (a server-side cursor), not the whole blob in memory.
                query = select(BC.c.data).where(BC.c.digest == digest).order_by(BC.c.seq)
                rows = s.execute(query.execution_options(yield_per=4))
                for (chunk,) in rows:
                    out.write(chunk)
            super().keep(Path(tmp), digest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return super().open(digest)
