"""SQLAlchemy table definitions: the one description of the schema.

Timestamps are stored as fixed-width ISO-8601 UTC strings
(``2026-01-02T03:04:05.123456Z``) so that they compare correctly as text on
every backend and hash identically in the audit chain.  Alembic migrations in
``migrations/versions`` create exactly these tables; ``tests/store`` checks
that the migrated schema matches this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "api_tokens",
    "audit_events",
    "kv_entries",
    "login_failures",
    "metadata",
    "notify_channels",
    "notify_deliveries",
    "notify_messages",
    "plugin_logs",
    "plugin_policies",
    "plugins",
    "sessions",
    "static_objects",
    "users",
    "workers",
]

metadata = MetaData()

TS = String(32)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("scopes", Text, nullable=False),  # JSON list
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 hex of the cookie value
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_hash", String(64), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scopes", Text, nullable=False),  # JSON list
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=True),
    Column("revoked_at", TS, nullable=True),
    Column("last_used_at", TS, nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", TS, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(128), nullable=False),
    Column("target", String(512), nullable=False),
    Column("decision", String(8), nullable=False),
    Column("reason", Text, nullable=False),
    Column("correlation_id", String(64), nullable=True),
    Column("detail", Text, nullable=False),  # canonical JSON, hashed as stored
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("mac", String(64), nullable=True),  # HMAC(audit key, hash); NULL only before keying
)
Index("ix_audit_ts", audit_events.c.ts)
# filters served newest-first in seq order (migration 0009)
Index("ix_audit_target_seq", audit_events.c.target, audit_events.c.seq)
Index("ix_audit_actor_seq", audit_events.c.actor, audit_events.c.seq)
Index("ix_audit_decision_seq", audit_events.c.decision, audit_events.c.seq)
Index(
    "ix_audit_target_decision_seq",
    audit_events.c.target,
    audit_events.c.decision,
    audit_events.c.seq,
)
Index(
    "ix_audit_actor_decision_seq", audit_events.c.actor, audit_events.c.decision, audit_events.c.seq
)

kv_entries = Table(
    "kv_entries",
    metadata,
    Column("bucket", String(128), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("updated_at", TS, nullable=False),
)

static_objects = Table(
    "static_objects",
    metadata,
    Column("bucket", String(128), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("content_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("updated_at", TS, nullable=False),
)

plugins = Table(
    "plugins",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("type", String(16), nullable=False),
    Column("version", String(64), nullable=False),
    Column("publisher", String(128), nullable=False),
    Column("capabilities", Text, nullable=False),  # JSON list, as last verified
    Column("digest_sha256", String(64), nullable=False),  # as last verified
    Column("approved_digest", String(64), nullable=True),  # what the operator consented to
    Column("approved_capabilities", Text, nullable=True),  # JSON list
    # 0007: consent covers publisher, type and entrypoint too (NULL: not recorded yet)
    Column("entrypoint", String(128), nullable=False, server_default=""),  # as last verified
    Column("approved_publisher", String(128), nullable=True),
    Column("approved_type", String(16), nullable=True),
    Column("approved_entrypoint", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("review_required", Boolean, nullable=False, default=False),
    Column("bundle", String(255), nullable=False),  # server-private bundle directory name
    Column("created_at", TS, nullable=False),
    Column("verified_at", TS, nullable=True),
    Column("installed_at", TS, nullable=True),
    Column("activated_at", TS, nullable=True),
    Column("disabled_at", TS, nullable=True),
    Column("updated_at", TS, nullable=False),
)

plugin_logs = Table(
    "plugin_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plugin_id", String(128), nullable=False),
    Column("ts", TS, nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
    Column("fields", Text, nullable=False),  # JSON object
    Column("correlation_id", String(64), nullable=True),
)
Index("ix_plugin_logs_plugin", plugin_logs.c.plugin_id, plugin_logs.c.id)

plugin_policies = Table(
    "plugin_policies",
    metadata,
    Column("plugin_id", String(128), primary_key=True),
    Column("allow_hosts", Text, nullable=True),  # JSON list; NULL = any public host
    Column("static_buckets", Text, nullable=True),  # JSON list; NULL = plugin:<id> only
    Column("updated_at", TS, nullable=False),
)

notify_channels = Table(
    "notify_channels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("url_encrypted", LargeBinary, nullable=False),  # AES-GCM, context "notify-channel"
    Column("url_masked", String(512), nullable=False),  # Apprise privacy rendering
    Column("service", String(32), nullable=False),
    Column("tags", Text, nullable=False),  # JSON list
    Column("enabled", Boolean, nullable=False, default=True),
    Column("rate_per_minute", Integer, nullable=False, default=30),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)

notify_messages = Table(  # the outbox: written before any delivery is tried
    "notify_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("title", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("tags", Text, nullable=False),  # JSON list
    Column("source", String(160), nullable=False),
    Column("created_at", TS, nullable=False),
)

notify_deliveries = Table(
    "notify_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "message_id",
        Integer,
        ForeignKey("notify_messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "channel_id",
        Integer,
        ForeignKey("notify_channels.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column("channel_name", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("delivered_at", TS, nullable=True),
)
Index("ix_notify_deliveries_due", notify_deliveries.c.status, notify_deliveries.c.next_attempt_at)

workers = Table(
    "workers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # template | js
    Column("source", Text, nullable=False),
    Column("capabilities", Text, nullable=False),  # JSON list
    Column("bindings", Text, nullable=False),  # JSON object
    Column("public", Boolean, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("deployed_by", String(160), nullable=True),  # actor whose scopes allowed its reads
)

login_failures = Table(  # failed logins inside the window; pruned as new ones arrive
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),  # as typed (lowercased), may not exist
    Column("addr", String(64), nullable=False),  # the client address the server trusts
    Column("at", TS, nullable=False),
)
Index(
    "ix_login_failures_user_addr",
    login_failures.c.username,
    login_failures.c.addr,
    login_failures.c.at,
)
Index("ix_login_failures_addr", login_failures.c.addr, login_failures.c.at)
