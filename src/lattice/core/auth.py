"""Identity: users (argon2id), browser sessions with CSRF tokens, and personal
access tokens.

Session cookies and tokens are 256-bit random values; only their SHA-256
hashes are stored, so a database dump yields no usable credential.  Token
format: ``lat_<id>_<secret>``; the id is public (listing, revocation).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, delete, select, update

from lattice.core.audit import AuditLog
from lattice.core.auditsink import AuditSink
from lattice.core.ratelimit import LoginFailures
from lattice.core.scopes import ALL, effective_scopes, grants, validate_scopes
from lattice.errors import (
    AuthError,
    Conflict,
    NotFound,
    RateLimited,
    TokenTooBroad,
    ValidationFailed,
)
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import api_tokens, sessions, users

__all__ = ["AuthService", "Principal", "TokenInfo"]

TOKEN_PREFIX = "lat_"  # noqa: S105 - a prefix, not a secret
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_TOKEN = re.compile(r"^lat_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_TOKEN_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
MAX_TOKEN_DAYS = 3650

# Built once: this runs on every bearer-authenticated request.
_TOKEN_LOOKUP = (
    select(
        api_tokens.c.id.label("token_id"),
        api_tokens.c.token_hash,
        api_tokens.c.scopes.label("token_scopes"),
        api_tokens.c.expires_at,
        api_tokens.c.revoked_at,
        users.c.id,
        users.c.username,
        users.c.scopes,
        users.c.disabled,
    )
    .join(users, users.c.id == api_tokens.c.user_id)
    .where(api_tokens.c.token_hash == bindparam("token_hash"))
)
_SESSION_LOOKUP = (
    select(sessions.c.csrf_hash, sessions.c.expires_at, users)
    .join(users, users.c.id == sessions.c.user_id)
    .where(sessions.c.id == bindparam("session_hash"))
)
MIN_PASSWORD = 12


@functools.lru_cache(maxsize=1024)
def _token_scopes(token_json: str, user_json: str) -> frozenset[str]:
    """A token's effective scopes from the two stored JSON lists (pure, so the
    parse is cached by the exact stored text; a changed grant is new text)."""
    return effective_scopes(json.loads(token_json), json.loads(user_json))


def make_hasher() -> PasswordHasher:
    """argon2id with the library's vetted defaults (RFC 9106 low-memory profile)."""
    return PasswordHasher()


_DUMMY: dict[tuple[int, int, int], str] = {}


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash of a random secret with the same parameters, verified against when
    the user does not exist so that path costs the same; computed once per process."""
    key = (hasher.time_cost, hasher.memory_cost, hasher.parallelism)
    if key not in _DUMMY:
        _DUMMY[key] = hasher.hash(secrets.token_urlsafe(16))
    return _DUMMY[key]


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    scopes: frozenset[str]
    via: str  # "session" | "token"
    token_id: str | None = None
    csrf_hash: str | None = field(default=None, repr=False)
    #: for a token caller: when its token expires (None: never)
    expires_at: str | None = None

    def has(self, scope: str) -> bool:
        return grants(self.scopes, scope)

    @property
    def actor(self) -> str:
        return f"user:{self.username}" + (f"/token:{self.token_id}" if self.token_id else "")


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    scopes: list[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AuthService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        session_ttl: timedelta = timedelta(hours=12),
        login_limit: int = 5,
        login_window: float = 300.0,
        flood_audit: AuditSink | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        #: where refusals that a flood repeats go (the write-behind sink, which
        #: folds identical events into one with a count); the log itself if unset
        self._flood_audit: AuditSink = flood_audit or audit
        self._hasher = make_hasher()
        self._dummy_hash = _dummy_hash(self._hasher)
        self._session_ttl = session_ttl
        self._failures = LoginFailures(db, login_limit, login_window)
        self._token_lookup = db.prepare(_TOKEN_LOOKUP)
        self._session_lookup = db.prepare(_SESSION_LOOKUP)

    # -- users -----------------------------------------------------------

    def has_users(self) -> bool:
        with self._db.read() as conn:
            return conn.execute(select(users.c.id).limit(1)).first() is not None

    def create_user(
        self, username: str, password: str, scopes: list[str], *, actor: str = "system"
    ) -> int:
        if not _USERNAME.match(username):
            raise ValidationFailed("username must be 1-64 characters of a-z, 0-9, '.', '_' or '-'")
        _check_password(password)
        now = now_iso()
        with self._db.write() as conn:
            exists = conn.execute(select(users.c.id).where(users.c.username == username)).first()
            if exists:
                raise Conflict(f"user {username!r} already exists")
            result = conn.execute(
                users.insert().values(
                    username=username,
                    password_hash=self._hasher.hash(password),
                    scopes=json.dumps(validate_scopes(scopes)),
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        self._audit.append(
            actor=actor,
            action="user.create",
            target=f"user:{username}",
            detail={"scopes": validate_scopes(scopes)},
        )
        return user_id

    def bootstrap_admin(self, password: str | None) -> str | None:
        """Create ``admin`` on first run; return the generated password if any."""
        if self.has_users():
            return None
        generated = None
        if not password:
            generated = password = secrets.token_urlsafe(18)
        try:
            self.create_user("admin", password, [ALL])
        except Conflict:  # another process bootstrapped first
            return None
        return generated

    def set_password(self, username: str, password: str, *, actor: str = "cli") -> None:
        _check_password(password)
        with self._db.write() as conn:
            result = conn.execute(
                update(users)
                .where(users.c.username == username)
                .values(password_hash=self._hasher.hash(password), updated_at=now_iso())
            )
            if result.rowcount == 0:
                raise NotFound(f"no user named {username!r}")
            uid = conn.execute(select(users.c.id).where(users.c.username == username)).scalar_one()
            conn.execute(delete(sessions).where(sessions.c.user_id == uid))
        self._audit.append(actor=actor, action="user.password", target=f"user:{username}")

    def unlock(self, username: str, *, actor: str = "cli") -> int:
        """Forget every failed login of ``username`` (all addresses); audited."""
        if self._user_row(username) is None:
            raise NotFound(f"no user named {username!r}")
        cleared = self._failures.reset(username.lower())
        self._audit.append(
            actor=actor,
            action="user.unlock",
            target=f"user:{username}",
            detail={"failures_cleared": cleared},
        )
        return cleared

    def _user_row(self, username: str) -> Any:
        with self._db.read() as conn:
            return conn.execute(select(users).where(users.c.username == username)).first()

    # -- login / sessions ------------------------------------------------

    def login(self, username: str, password: str, *, client: str) -> tuple[str, str, Principal]:
        """Return ``(session_token, csrf_token, principal)`` or raise.

        Failures are rate-limited per (username, client address) and per client
        address, never per username alone, so nobody elsewhere can lock a user
        out; an unknown user costs the same argon2 work as a wrong password.
        """
        # an impossible name shares one bucket per address, and never reaches SQL raw
        name = username.lower() if _USERNAME.match(username.lower()) else "?"
        addr = address_bucket(client)
        wait = self._failures.retry_after(name, addr)
        if wait > 0:
            self._deny_login(client, username, "rate limited", sink=self._flood_audit)
            raise RateLimited("too many failed logins; try again later", retry_after=wait)
        row = self._user_row(username) if _USERNAME.match(username) else None
        ok = self._verify(row.password_hash if row else self._dummy_hash, password)
        if not ok or row is None or row.disabled:
            self._failures.fail(name, addr)
            self._deny_login(client, username, "bad credentials")
            raise AuthError("invalid username or password")
        self._failures.reset(name, addr)
        if self._hasher.check_needs_rehash(row.password_hash):
            self.set_password(username, password, actor=f"user:{username}")
        session_token = secrets.token_urlsafe(32)
        csrf_token = secrets.token_urlsafe(32)
        with self._db.write() as conn:
            conn.execute(
                sessions.insert().values(
                    id=_sha256(session_token),
                    user_id=row.id,
                    csrf_hash=_sha256(csrf_token),
                    created_at=now_iso(),
                    expires_at=now_iso(self._session_ttl),
                )
            )
        self._audit.append(
            actor=f"user:{username}@{client}", action="auth.login", target=f"user:{username}"
        )
        principal = Principal(
            user_id=row.id,
            username=row.username,
            scopes=frozenset(json.loads(row.scopes)),
            via="session",
            csrf_hash=_sha256(csrf_token),
        )
        return session_token, csrf_token, principal

    def _deny_login(
        self, client: str, username: str, reason: str, *, sink: AuditSink | None = None
    ) -> None:
        (sink or self._audit).append(
            actor=f"anon@{client}",
            action="auth.login",
            target=f"user:{username[:64]}",
            decision="deny",
            reason=reason,
        )

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def logout(self, principal: Principal, session_token: str) -> None:
        with self._db.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.id == _sha256(session_token)))
        self._audit.append(
            actor=principal.actor, action="auth.logout", target=f"user:{principal.username}"
        )

    def from_session(self, session_token: str) -> Principal:
        if not session_token or len(session_token) > 128:
            raise AuthError("session is invalid or expired; log in again")
        row = self._session_lookup.first(session_hash=_sha256(session_token))
        if row is None or row.expires_at <= now_iso() or row.disabled:
            raise AuthError("session is invalid or expired; log in again")
        return Principal(
            user_id=row.id,
            username=row.username,
            scopes=frozenset(json.loads(row.scopes)),
            via="session",
            csrf_hash=row.csrf_hash,
        )

    @staticmethod
    def csrf_ok(principal: Principal, presented: str | None) -> bool:
        if principal.csrf_hash is None or not presented:
            return False
        return hmac.compare_digest(principal.csrf_hash, _sha256(presented))

    # -- personal access tokens ------------------------------------------

    def from_token(self, token: str) -> Principal:
        match = _TOKEN.match(token)
        if not match:
            raise AuthError("malformed bearer token; tokens look like lat_<id>_<secret>")
        row = self._token_lookup.first(token_hash=_sha256(token))
        if row is None or row.token_id != match.group(1):
            raise AuthError("unknown bearer token")
        if row.revoked_at is not None:
            raise AuthError("bearer token has been revoked")
        if row.expires_at is not None and row.expires_at <= now_iso():
            raise AuthError("bearer token has expired; create a new one")
        if row.disabled:
            raise AuthError("the token's user is disabled")
        scopes = _token_scopes(row.token_scopes, row.scopes)
        return Principal(
            user_id=row.id,
            username=row.username,
            scopes=scopes,
            via="token",
            token_id=row.token_id,
            expires_at=row.expires_at,
        )

    def create_token(
        self,
        principal_or_username: Principal | str,
        *,
        name: str,
        scopes: list[str],
        expires_in_days: int | None,
        actor: str | None = None,
    ) -> tuple[str, TokenInfo]:
        if not _TOKEN_NAME.match(name):
            raise ValidationFailed("token name must be 1-64 characters without control characters")
        wanted = validate_scopes(scopes)
        if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
            raise ValidationFailed(f"expires_in_days must be between 1 and {MAX_TOKEN_DAYS}")
        expires_at = now_iso(timedelta(days=expires_in_days)) if expires_in_days else None
        if isinstance(principal_or_username, Principal):
            user_id, username = principal_or_username.user_id, principal_or_username.username
            held: frozenset[str] = principal_or_username.scopes
            actor = actor or principal_or_username.actor
            expires_at = self._bounded_expiry(principal_or_username, expires_at, actor)
        else:
            row = self._user_row(principal_or_username)
            if row is None:
                raise NotFound(f"no user named {principal_or_username!r}")
            user_id, username = row.id, row.username
            held = frozenset(json.loads(row.scopes))
            actor = actor or "cli"
        for scope in wanted:
            if not (grants(held, scope) if scope != ALL else ALL in held):
                self._audit.append(
                    actor=actor,
                    action="token.create",
                    target=f"user:{username}",
                    decision="deny",
                    reason=f"scope {scope!r} not held",
                )
                raise ValidationFailed(
                    f"cannot grant scope {scope!r}: the user does not hold it",
                    detail={"scope": scope},
                )
        token_id = "".join(
            secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12)
        )
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        info = TokenInfo(
            id=token_id,
            name=name,
            scopes=wanted,
            created_at=now_iso(),
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
        )
        with self._db.write() as conn:
            conn.execute(
                api_tokens.insert().values(
                    id=info.id,
                    user_id=user_id,
                    name=info.name,
                    token_hash=_sha256(token),
                    scopes=json.dumps(info.scopes),
                    created_at=info.created_at,
                    expires_at=info.expires_at,
                )
            )
        self._audit.append(
            actor=actor,
            action="token.create",
            target=f"token:{token_id}",
            detail={"name": name, "scopes": wanted, "expires_at": info.expires_at},
        )
        return token, info

    def _bounded_expiry(self, parent: Principal, wanted: str | None, actor: str) -> str | None:
        """A token never mints a token that outlives it: no expiry asked for
        inherits the parent's, a later one is refused naming the limit."""
        if parent.via != "token" or parent.expires_at is None:
            return wanted
        if wanted is None:
            return parent.expires_at
        if wanted > parent.expires_at:
            self._audit.append(
                actor=actor,
                action="token.create",
                target=f"user:{parent.username}",
                decision="deny",
                reason="would outlive the calling token",
            )
            raise ValidationFailed(
                "a token cannot create a token that outlives it: the calling token expires at "
                f"{parent.expires_at}; ask for fewer days or omit expires_in_days to inherit it",
                detail={"max_expires_at": parent.expires_at},
            )
        return wanted

    def _manageable(self, principal: Principal, row: Any, user_scopes: list[str]) -> bool:
        """Session callers manage all their tokens; a token caller only itself and
        tokens whose (effective) scopes it holds too."""
        if principal.via != "token" or row.id == principal.token_id:
            return True
        theirs = effective_scopes(json.loads(row.scopes), user_scopes)
        return all((ALL in principal.scopes) if s == ALL else principal.has(s) for s in theirs)

    def _token_rows(
        self, principal: Principal, token_id: str | None = None
    ) -> list[tuple[Any, bool]]:
        """The user's tokens (or the one named) with ``manageable`` worked out."""
        query = select(api_tokens).where(api_tokens.c.user_id == principal.user_id)
        if token_id is not None:
            query = query.where(api_tokens.c.id == token_id)
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(api_tokens.c.created_at)).all()
            user_scopes = json.loads(
                conn.execute(
                    select(users.c.scopes).where(users.c.id == principal.user_id)
                ).scalar_one()
            )
        return [(r, self._manageable(principal, r, user_scopes)) for r in rows]

    def list_tokens(self, principal: Principal) -> list[TokenInfo]:
        rows = [r for r, manageable in self._token_rows(principal) if manageable]
        return [
            TokenInfo(
                id=r.id,
                name=r.name,
                scopes=json.loads(r.scopes),
                created_at=r.created_at,
                expires_at=r.expires_at,
                revoked_at=r.revoked_at,
                last_used_at=r.last_used_at,
            )
            for r in rows
        ]

    def revoke_token(self, principal: Principal, token_id: str) -> None:
        found = self._token_rows(principal, token_id)
        if found and not found[0][1]:
            self._audit.append(
                actor=principal.actor,
                action="token.revoke",
                target=f"token:{token_id}",
                decision="deny",
                reason="broader than the calling token",
            )
            raise TokenTooBroad(
                f"token {token_id!r} holds scopes the calling token does not; "
                "revoke it from a password session (log in) or with a token that holds them"
            )
        with self._db.write() as conn:
            result = conn.execute(
                update(api_tokens)
                .where(
                    api_tokens.c.id == token_id,
                    api_tokens.c.user_id == principal.user_id,
                    api_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now_iso())
            )
        if result.rowcount == 0:
            raise NotFound(f"no active token with id {token_id!r}")
        self._audit.append(actor=principal.actor, action="token.revoke", target=f"token:{token_id}")


def address_bucket(client: str) -> str:
    """The address failed logins are counted under: an IPv4 address as is, an
    IPv6 address by its /64 (one host usually holds the whole /64, so rotating
    inside it buys no fresh windows)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise ValidationFailed("password must be at most 1024 characters")
