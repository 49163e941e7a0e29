"""What seals the audit chain against someone who can write the database.

* :class:`AuditKey` - HMAC-SHA256 keys derived (HKDF) from the server's secret
  key file, which lives outside the database.  Every row stores
  ``mac = HMAC(chain key, bytes.fromhex(hash))``; without the key nobody can
  re-hash an edited row, renumber after a delete or append a forged event.
* :class:`CheckpointFile` - the chain head (``seq``, ``hash``, time) written
  outside the database, signed with the checkpoint key, so deleting the newest
  rows is detected up to the latest checkpoint.  One line of canonical JSON::

      {"hash":"<hex>","mac":"<hex>","seq":N,"ts":"...","v":1}

  ``mac = HMAC(checkpoint key, canonical_json({hash, seq, ts, v}))``.  Written
  atomically (temporary file, fsync, rename), mode 0600, at most 1 KiB; a write
  never replaces a stored checkpoint with a lower ``seq`` (two processes may
  share a data directory); one that is not authentic is moved to
  ``audit.checkpoint.invalid`` and replaced.
* :class:`Checkpointer` - the server's thread that writes a checkpoint every
  ``interval`` seconds when the head moved, and once more when stopped.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lattice.core.secrets import derive_key
from lattice.errors import AuditCheckpointInvalid, LatticeError
from lattice.store.clock import now_iso

__all__ = ["CHECKPOINT_FILE", "AuditKey", "Checkpoint", "CheckpointFile", "Checkpointer"]

log = logging.getLogger("lattice.audit")

#: the checkpoint's name inside the data directory
CHECKPOINT_FILE = "audit.checkpoint"
_MAX_BYTES = 1024
_HEX64 = frozenset("0123456789abcdef")


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


class AuditKey:
    """The chain's MAC keys; derived, never stored, never printed."""

    __slots__ = ("_chain", "_chain_hmac", "_checkpoint")

    def __init__(self, secret_key: bytes) -> None:
        self._chain = derive_key(secret_key, b"lattice audit chain v1")
        self._checkpoint = derive_key(secret_key, b"lattice audit checkpoint v1")
        # keyed once; each row MAC copies it (cheaper than keying per call)
        self._chain_hmac = hmac.new(self._chain, digestmod="sha256")

    def __repr__(self) -> str:
        return "AuditKey(<hidden>)"

    def row_mac(self, digest: str) -> str:
        """The MAC of one row, over its (hex) chain hash."""
        return hmac.digest(self._chain, bytes.fromhex(digest), "sha256").hex()

    def row_mac_raw(self, digest: bytes) -> str:
        """:meth:`row_mac` of a digest given as its 32 raw bytes (the append path)."""
        h = self._chain_hmac.copy()
        h.update(digest)
        return h.hexdigest()

    def row_mac_ok(self, digest: str, mac: str | None) -> bool:
        if mac is None or len(digest) != 64 or not _HEX64.issuperset(digest):
            return False
        return hmac.compare_digest(self.row_mac(digest), mac)

    def checkpoint_mac(self, payload: bytes) -> str:
        return hmac.digest(self._checkpoint, payload, "sha256").hex()


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    ts: str

    def signed_part(self) -> bytes:
        return _json({"hash": self.hash, "seq": self.seq, "ts": self.ts, "v": 1})


class CheckpointFile:
    def __init__(self, path: Path, key: AuditKey) -> None:
        self.path = path
        self._key = key

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> Checkpoint | None:
        """The stored checkpoint, None if there is none yet; raises
        :class:`AuditCheckpointInvalid` if it is unreadable or not authentic."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditCheckpointInvalid(
                f"cannot read audit checkpoint {self.path}: {exc.strerror}"
            ) from exc
        checkpoint = self._parse(raw)
        if checkpoint is None:
            raise AuditCheckpointInvalid(
                f"audit checkpoint {self.path} is not authentic (edited, or written "
                "with another secret key)"
            )
        return checkpoint

    def _parse(self, raw: bytes) -> Checkpoint | None:
        try:
            doc = json.loads(raw) if len(raw) <= _MAX_BYTES else None
        except ValueError:
            return None
        if not isinstance(doc, dict) or set(doc) != {"hash", "mac", "seq", "ts", "v"}:
            return None
        seq, digest, ts, mac = doc["seq"], doc["hash"], doc["ts"], doc["mac"]
        if doc["v"] != 1 or type(seq) is not int or seq < 0:
            return None
        if not all(isinstance(v, str) for v in (digest, ts, mac)) or len(ts) > 32:
            return None
        checkpoint = Checkpoint(seq=seq, hash=digest, ts=ts)
        if not hmac.compare_digest(self._key.checkpoint_mac(checkpoint.signed_part()), mac):
            return None
        return checkpoint

    def write(self, seq: int, digest: str) -> Checkpoint:
        """Store ``(seq, digest)`` as the latest checkpoint unless a later one is stored."""
        try:
            stored = self.read()
        except AuditCheckpointInvalid as exc:  # kept aside for whoever investigates
            kept = self.path.with_name(self.path.name + ".invalid")
            log.error("%s; moved to %s, writing a new one", exc.message, kept)
            with contextlib.suppress(OSError):
                os.replace(self.path, kept)
            stored = None
        if stored is not None and stored.seq > seq:
            return stored
        checkpoint = Checkpoint(seq=seq, hash=digest, ts=now_iso())
        body = checkpoint.signed_part()
        doc = json.loads(body) | {"mac": self._key.checkpoint_mac(body)}
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_json(doc) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise AuditCheckpointInvalid(
                f"cannot write audit checkpoint {self.path}: {exc.strerror}"
            ) from exc
        return checkpoint


class Checkpointer:
    """Calls ``write`` every ``interval`` seconds, and once more on :meth:`stop`."""

    def __init__(self, write: Callable[[], object], *, interval: float = 10.0) -> None:
        self._write = write
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def _tick(self) -> None:
        try:
            self._write()
        except LatticeError as exc:  # the store or the disk is down; try again later
            log.error("audit checkpoint failed: %s", exc.message)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._tick()
