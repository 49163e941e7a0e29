"""The audit chain's key and checkpoint file, and AuditLog's keyed startup."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from lattice.core.audit import AuditLog
from lattice.core.auditseal import AuditKey, Checkpointer, CheckpointFile
from lattice.errors import AuditChainBroken, AuditCheckpointInvalid, ConfigError
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import audit_events

KEY = AuditKey(os.urandom(32))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


def test_the_key_is_derived_per_purpose_and_never_shown() -> None:
    secret = os.urandom(32)
    a, b = AuditKey(secret), AuditKey(secret)
    digest = "ab" * 32
    assert a.row_mac(digest) == b.row_mac(digest) != AuditKey(os.urandom(32)).row_mac(digest)
    assert a.row_mac(digest) != a.checkpoint_mac(bytes.fromhex(digest))
    assert secret.hex() not in repr(a) and "hidden" in repr(a)
    assert a.row_mac_ok(digest, a.row_mac(digest))
    assert not a.row_mac_ok(digest, None) and not a.row_mac_ok("zz" * 32, a.row_mac(digest))


def test_checkpoint_file_is_private_atomic_and_never_goes_back(tmp_path: Path) -> None:
    cp = CheckpointFile(tmp_path / "audit.checkpoint", KEY)
    assert cp.read() is None and not cp.exists()
    cp.write(7, "aa" * 32)
    assert cp.read() is not None and cp.read().seq == 7  # type: ignore[union-attr]
    assert cp.path.stat().st_mode & 0o777 == 0o600
    cp.write(5, "bb" * 32)  # a process with an older head does not lower it
    assert cp.read().seq == 7  # type: ignore[union-attr]
    cp.write(9, "cc" * 32)
    assert cp.read().hash == "cc" * 32  # type: ignore[union-attr]
    assert [p.name for p in tmp_path.iterdir()] == ["audit.checkpoint"]  # no temp files left


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b'{"seq": 1}',
        b" " * 2048 + b"{}",
        b"[1,2]",
    ],
)
def test_a_bad_checkpoint_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "audit.checkpoint"
    path.write_bytes(content)
    with pytest.raises(AuditCheckpointInvalid, match="not authentic"):
        CheckpointFile(path, KEY).read()


def test_a_checkpoint_signed_with_another_key_or_edited_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.checkpoint"
    CheckpointFile(path, AuditKey(os.urandom(32))).write(3, "aa" * 32)
    with pytest.raises(AuditCheckpointInvalid):
        CheckpointFile(path, KEY).read()
    CheckpointFile(path, KEY).write(3, "aa" * 32)  # replaces the foreign one, keeping it aside
    assert (tmp_path / "audit.checkpoint.invalid").exists()
    doc = json.loads(path.read_text())
    for field, value in (("seq", 2), ("hash", "bb" * 32), ("ts", "2020"), ("v", 2)):
        path.write_text(json.dumps(doc | {field: value}))
        with pytest.raises(AuditCheckpointInvalid):
            CheckpointFile(path, KEY).read()


def test_verify_needs_the_key(db: Database) -> None:
    AuditLog(db, key=KEY).append(actor="a", action="test.x")
    with pytest.raises(ConfigError, match="secret key file"):
        AuditLog(db).verify()


def test_prepare_seals_only_the_leading_unkeyed_run_and_only_once(
    db: Database, tmp_path: Path
) -> None:
    legacy = AuditLog(db)  # no key: rows as written before keying
    for i in range(4):
        legacy.append(actor="a", action=f"test.old{i}")
    cp = CheckpointFile(tmp_path / "audit.checkpoint", KEY)
    keyed = AuditLog(db, key=KEY, checkpoints=cp)
    keyed.prepare()
    assert keyed.verify() == 4
    assert cp.read().seq == 4  # type: ignore[union-attr]
    # an unkeyed row appended later is not sealed by another start
    legacy.append(actor="a", action="test.late")
    AuditLog(db, key=KEY, checkpoints=cp).prepare()
    with pytest.raises(AuditChainBroken, match="no MAC") as info:
        keyed.verify()
    assert info.value.seq == 5


def test_backfill_stops_at_a_broken_row(db: Database) -> None:
    legacy = AuditLog(db)
    for i in range(5):
        legacy.append(actor="a", action=f"test.old{i}")
    with db.write() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == 3).values(actor="b"))
    keyed = AuditLog(db, key=KEY)
    assert keyed.backfill_macs() == 2
    with pytest.raises(AuditChainBroken, match="does not match its hash") as info:
        keyed.verify()
    assert info.value.seq == 3


def test_the_checkpointer_writes_when_the_head_moves_and_when_stopped(
    db: Database, tmp_path: Path
) -> None:
    cp = CheckpointFile(tmp_path / "audit.checkpoint", KEY)
    log = AuditLog(db, key=KEY, checkpoints=cp)
    log.append(actor="a", action="test.one")
    written = threading.Event()

    def write() -> object:
        result = log.checkpoint()
        if result is not None:
            written.set()
        return result

    checkpointer = Checkpointer(write, interval=0.05)
    checkpointer.start()
    assert written.wait(30)
    assert cp.read().seq == 1  # type: ignore[union-attr]
    log.append(actor="a", action="test.two")
    checkpointer.stop()
    assert cp.read().seq == 2  # type: ignore[union-attr]
    assert log.verify() == 2


def test_two_keyed_writers_with_one_checkpoint_file(db: Database, tmp_path: Path) -> None:
    cp = CheckpointFile(tmp_path / "audit.checkpoint", KEY)
    writers = [AuditLog(db, key=KEY, checkpoints=cp) for _ in range(2)]

    def work(log: AuditLog) -> None:
        for i in range(20):
            log.append(actor="w", action="test.race", detail={"i": i})
            if i % 5 == 0:
                log.checkpoint()

    threads = [threading.Thread(target=work, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.checkpoint()
    assert writers[0].verify() == 40
    assert cp.read().seq == 40  # type: ignore[union-attr]
