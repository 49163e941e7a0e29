"""``lattice audit verify`` against someone who can write the database.

Each case builds a real deployment (data dir, key file, migrated database,
events, a checkpoint as the server writes it), tampers with the database in
plain SQL the way an attacker with write access would, and then runs both the
real CLI (``python3 -m lattice audit verify``) and ``AuditLog.verify``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from lattice.app import build_container
from lattice.config import Settings
from lattice.core.audit import GENESIS, AuditLog, chain_hash
from lattice.core.auditseal import CHECKPOINT_FILE, AuditKey, CheckpointFile
from lattice.core.secrets import load_key
from lattice.errors import (
    AuditChainBroken,
    AuditChainTruncated,
    AuditCheckpointInvalid,
    ConfigError,
)
from lattice.store.db import Database
from lattice.store.migrate import upgrade

EVENTS = 8
_FIELDS = ("ts", "actor", "action", "target", "decision", "reason", "correlation_id")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lattice", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Deployment:
    settings: Settings
    db: Database

    @property
    def env(self) -> dict[str, str]:
        return {
            "LATTICE_DATA_DIR": str(self.settings.data_dir),
            "LATTICE_DATABASE_URL": str(self.settings.database_url),
        }

    @property
    def last_seq(self) -> int:
        return int(self.sql("SELECT max(seq) FROM audit_events").scalar_one())

    def sql(self, statement: str, **params: Any) -> Any:
        with self.db.write() as conn:
            return conn.execute(text(statement), params)

    def rehash_from(self, seq: int) -> None:
        """Recompute hash and prev_hash of every row from ``seq`` on, as an attacker
        who knows the (public) hashing rule would after editing a row."""
        rows = self.sql("SELECT * FROM audit_events WHERE seq >= :s ORDER BY seq", s=seq).all()
        prev = (
            self.sql("SELECT hash FROM audit_events WHERE seq = :s", s=seq - 1).scalar_one()
            if seq > 1
            else GENESIS
        )
        for row in rows:
            event = {f: getattr(row, f) for f in _FIELDS}
            event |= {"seq": row.seq, "detail": json.loads(row.detail)}
            digest = chain_hash(prev, event)
            self.sql(
                "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s",
                p=prev, h=digest, s=row.seq,
            )  # fmt: skip
            prev = digest

    def verify(self) -> tuple[BaseException | int, subprocess.CompletedProcess[str]]:
        """The outcome of AuditLog.verify (count or exception) and of the CLI."""
        key = AuditKey(load_key(self.settings.effective_secret_key_file))
        log = AuditLog(
            self.db,
            key=key,
            checkpoints=CheckpointFile(self.settings.data_dir / CHECKPOINT_FILE, key),
        )
        outcome: BaseException | int
        try:
            outcome = log.verify()
        except (AuditChainBroken, AuditCheckpointInvalid, ConfigError) as exc:
            outcome = exc
        return outcome, run("audit", "verify", env=self.env)


def make_settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        admin_password="verify-admin-password",
        listen="127.0.0.1:0",
    )


@pytest.fixture
def dep(tmp_path: Path, db_url: str) -> Iterator[Deployment]:
    settings = make_settings(tmp_path, db_url)
    container = build_container(settings, announce=lambda _msg: None)
    for i in range(EVENTS):
        container.audit.append(
            actor="user:admin", action=f"test.e{i}", target=f"t{i}", detail={"i": i, "tags": ["a"]}
        )
    container.audit.checkpoint()  # what the server's checkpointer writes every 10 s
    container.close()
    db = Database(db_url)
    deployment = Deployment(settings, db)
    assert deployment.last_seq > EVENTS  # bootstrap events come first
    yield deployment
    db.dispose()


def assert_broken(dep: Deployment, seq: int, reason: str) -> None:
    outcome, cli = dep.verify()
    assert isinstance(outcome, AuditChainBroken), outcome
    assert not isinstance(outcome, AuditChainTruncated)
    assert outcome.seq == seq and reason in outcome.reason, outcome
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert cli.stdout.startswith(f"audit chain BROKEN at seq {seq}: "), cli.stdout
    assert reason in cli.stdout and "Traceback" not in cli.stderr


def test_an_untouched_chain_verifies_against_its_checkpoint(dep: Deployment) -> None:
    outcome, cli = dep.verify()
    assert outcome == dep.last_seq
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"audit chain OK: {dep.last_seq} events verified; checkpoint at seq {dep.last_seq}" in (
        cli.stdout
    )
    # every row carries a MAC, and the checkpoint file is private and small
    assert dep.sql("SELECT count(*) FROM audit_events WHERE mac IS NULL").scalar_one() == 0
    path = dep.settings.data_dir / CHECKPOINT_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size < 1024


def test_an_edited_row_rehashed_with_the_rest_is_caught(dep: Deployment) -> None:
    dep.sql("UPDATE audit_events SET actor = 'user:mallory' WHERE seq = 4")
    dep.rehash_from(4)
    assert_broken(dep, 4, "MAC does not match")


def test_a_deleted_row_with_renumbering_is_caught(dep: Deployment) -> None:
    last = dep.last_seq
    dep.sql("DELETE FROM audit_events WHERE seq = 3")
    for seq in range(4, last + 1):
        dep.sql("UPDATE audit_events SET seq = :n WHERE seq = :s", n=seq - 1, s=seq)
    dep.rehash_from(3)
    assert_broken(dep, 3, "MAC does not match")


@pytest.mark.parametrize("mac", [None, "copied", "0" * 64])
def test_an_appended_forged_event_is_caught(dep: Deployment, mac: str | None) -> None:
    head = dep.sql("SELECT seq, hash, mac FROM audit_events ORDER BY seq DESC LIMIT 1").one()
    event = {
        "seq": head.seq + 1, "ts": "2026-01-01T00:00:00.000000Z", "actor": "user:admin",
        "action": "token.create", "target": "token:99", "decision": "allow", "reason": "",
        "correlation_id": None, "detail": {},
    }  # fmt: skip
    stored = {**event, "detail": "{}", "prev_hash": head.hash}
    stored |= {"hash": chain_hash(head.hash, event), "mac": head.mac if mac == "copied" else mac}
    dep.sql(
        "INSERT INTO audit_events (seq, ts, actor, action, target, decision, reason, "
        "correlation_id, detail, prev_hash, hash, mac) VALUES (:seq, :ts, :actor, :action, "
        ":target, :decision, :reason, :correlation_id, :detail, :prev_hash, :hash, :mac)",
        **stored,
    )
    assert_broken(dep, head.seq + 1, "no MAC" if mac is None else "MAC does not match")


def test_a_truncated_tail_is_caught(dep: Deployment) -> None:
    last = dep.last_seq
    dep.sql("DELETE FROM audit_events WHERE seq > :s", s=last - 2)
    outcome, cli = dep.verify()
    assert isinstance(outcome, AuditChainTruncated), outcome
    assert outcome.checkpoint_seq == last and outcome.last_seq == last - 2
    assert cli.returncode == 1
    assert cli.stdout.startswith(f"audit chain TRUNCATED after seq {last - 2}: "), cli.stdout
    assert f"checkpoint is at seq {last}" in cli.stdout


def test_a_rolled_back_and_continued_chain_misses_the_checkpoint(dep: Deployment) -> None:
    # the newest rows are replaced by other, validly keyed ones (say, an older
    # backup restored and written on): the row at the checkpoint's seq differs
    last = dep.last_seq
    dep.sql("DELETE FROM audit_events WHERE seq > :s", s=last - 2)
    key = AuditKey(load_key(dep.settings.effective_secret_key_file))
    writer = AuditLog(dep.db, key=key)
    for i in range(3):
        writer.append(actor="user:admin", action=f"test.other{i}")
    assert_broken(dep, last, "does not match the checkpoint")


@pytest.mark.parametrize(
    ("detail", "reason"),
    [
        ('{"i":0,"i":1,"tags":["a"]}', "duplicate key 'i'"),  # Python reads 1, hash holds
        ('{"i":1,"tags":["a"],"tags":["a"]}', "duplicate key 'tags'"),
        ('{"i": 1, "tags": ["a"]}', "not in canonical form"),
        ('{"tags":["a"],"i":1}', "not in canonical form"),
        ('{"i":1,"tags":["a"]} ', "not in canonical form"),
        ('{"i":1,"tags":["\\u0061"]}', "not in canonical form"),
    ],
)
def test_detail_that_is_not_canonical_json_is_caught(
    dep: Deployment, detail: str, reason: str
) -> None:
    seq = dep.sql("SELECT seq FROM audit_events WHERE action = 'test.e1'").scalar_one()
    dep.sql("UPDATE audit_events SET detail = :d WHERE seq = :s", d=detail, s=seq)
    assert_broken(dep, seq, reason)


def test_clearing_macs_is_no_way_back_to_an_unkeyed_chain(dep: Deployment) -> None:
    dep.sql("UPDATE audit_events SET mac = NULL")
    dep.sql("UPDATE audit_events SET reason = 'forged' WHERE seq = 2")
    dep.rehash_from(2)
    assert_broken(dep, 1, "no MAC")
    # a restart does not seal the forged rows: the data dir already has a checkpoint
    build_container(dep.settings, announce=lambda _msg: None).close()
    assert_broken(dep, 1, "no MAC")


def test_verify_without_the_key_fails_closed(dep: Deployment, tmp_path: Path) -> None:
    key_file = dep.settings.effective_secret_key_file
    shutil.move(key_file, tmp_path / "elsewhere.key")
    r = run("audit", "verify", env=dep.env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: cannot verify the audit chain without its key: ")
    assert f"secret key file {key_file} does not exist" in r.stderr
    assert not key_file.exists()  # verify never creates a key
    with pytest.raises(ConfigError, match="needs the server's secret key file"):
        AuditLog(dep.db).verify()
    # another key: every MAC and the checkpoint are wrong, nothing says OK
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    r = run("audit", "verify", env=dep.env)
    assert r.returncode == 1 and "OK" not in r.stdout
    assert r.stdout.startswith("audit checkpoint INVALID: "), r.stdout


def test_an_edited_checkpoint_file_is_caught(dep: Deployment) -> None:
    path = dep.settings.data_dir / CHECKPOINT_FILE
    doc = path.read_text()
    seq = dep.last_seq
    path.write_text(doc.replace(f'"seq":{seq}', f'"seq":{seq - 3}'))
    outcome, cli = dep.verify()
    assert isinstance(outcome, AuditCheckpointInvalid)
    assert cli.returncode == 1 and "not authentic" in cli.stdout


def test_rows_from_before_keying_are_sealed_at_the_first_start(tmp_path: Path, db_url: str) -> None:
    # a deployment at revision 0004: an unkeyed chain, written as the old code did
    db = Database(db_url)
    (tmp_path / "data").mkdir(mode=0o700, exist_ok=True)
    upgrade(db, "0004")
    prev = GENESIS
    for seq in range(1, 6):
        event = {
            "seq": seq, "ts": f"2026-01-0{seq}T00:00:00.000000Z", "actor": "user:admin",
            "action": "auth.login", "target": "user:admin", "decision": "allow", "reason": "",
            "correlation_id": None, "detail": {"n": seq},
        }  # fmt: skip
        digest = chain_hash(prev, event)
        with db.write() as conn:
            conn.execute(
                text(
                    "INSERT INTO audit_events VALUES (:seq, :ts, :actor, :action, :target, "
                    ":decision, :reason, :correlation_id, :detail, :prev_hash, :hash)"
                ),
                {**event, "detail": f'{{"n":{seq}}}', "prev_hash": prev, "hash": digest},
            )
        prev = digest
    db.dispose()
    settings = make_settings(tmp_path, db_url)
    build_container(settings, announce=lambda _msg: None).close()  # upgrade + first start
    dep = Deployment(settings, Database(db_url))
    try:
        outcome, cli = dep.verify()
        assert outcome == dep.last_seq > 5, outcome
        assert cli.returncode == 0 and "audit chain OK" in cli.stdout, cli.stdout + cli.stderr
        dep.sql("UPDATE audit_events SET reason = 'edited' WHERE seq = 2")
        dep.rehash_from(2)
        assert_broken(dep, 2, "MAC does not match")
    finally:
        dep.db.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_server_checkpoints_its_head_at_shutdown(tmp_path: Path) -> None:
    port = _free_port()
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'data' / 'lattice.db'}")
    env = {
        **os.environ,
        "LATTICE_DATA_DIR": str(settings.data_dir),
        "LATTICE_DATABASE_URL": str(settings.database_url),
        "LATTICE_ADMIN_PASSWORD": "verify-admin-password",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lattice", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(port, proc)
        base = f"http://127.0.0.1:{port}"
        for password in ("wrong-password-1", "wrong-password-2", "verify-admin-password"):
            r = httpx.post(f"{base}/api/login", json={"username": "admin", "password": password})
            assert r.status_code in (200, 401), r.text
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    dep = Deployment(settings, Database(str(settings.database_url)))
    try:
        key = AuditKey(load_key(settings.effective_secret_key_file))
        anchor = CheckpointFile(settings.data_dir / CHECKPOINT_FILE, key).read()
        assert anchor is not None and anchor.seq == dep.last_seq  # the head after the logins
        logins = "SELECT count(*) FROM audit_events WHERE action = 'auth.login'"
        assert dep.sql(logins).scalar_one() == 3
        dep.sql("DELETE FROM audit_events WHERE seq = :s", s=anchor.seq)
        r = run("audit", "verify", env=dep.env)
        assert r.returncode == 1 and r.stdout.startswith("audit chain TRUNCATED"), r.stdout
    finally:
        dep.db.dispose()


def _wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
