"""The delivery worker: one dispatcher thread feeding a small pool of senders.

Dispatcher loop (``DeliveryWorker._dispatch``), every wake-up:

1. read pending deliveries that are due, skipping channels with an attempt in
   flight (at most one attempt per channel at a time, in outbox order);
2. per delivery: a deleted or disabled channel fails it at once; the channel's
   token bucket (``rate_per_minute``, burst one minute's worth) may *reschedule*
   it to when a token is due - never fail it;
3. claim it by moving ``next_attempt_at`` to a lease (compare-and-set), then
   hand it to the pool;
4. sleep until the next due delivery (at most ``IDLE`` seconds) or until
   :meth:`wake` (a new message, a finished attempt).

An attempt (``_attempt``) decrypts the URL, asks Apprise for the plugin's
network destinations and runs :func:`check_destinations` (egress policy) before
Apprise sends anything.  Apprise's HTTP then goes through the egress guard
(``notify_http``): resolved once, every address checked, the checked address
dialled, every redirect hop checked again; any refused hop fails the attempt
with ``egress blocked: ...`` whatever the plugin reports.  Non-HTTP services
(SMTP, syslog, ...) dial on their own after the pre-check, so for them a DNS
answer that changes between the check and the connect is not caught; their
destinations come only from operators.

Outcomes: delivered; retry with exponential backoff (``base * 2**(n-1)``
capped at ``RETRY_CAP``); or failed after ``max_attempts`` or at once for a
permanent refusal (egress address/port, invalid URL, undecryptable secret).
Every final outcome is an audit event ``notify.delivery``.  A slow channel
holds one pool thread for at most ``timeout`` seconds and never the others.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import timedelta

from lattice.core.auditsink import AuditSink
from lattice.core.ratelimit import TokenBucket
from lattice.errors import EgressBlocked, LatticeError, SecretError, StoreError
from lattice.services.egress import EgressGuard, Resolver, SystemResolver
from lattice.services.egress_policy import Category, EgressPolicy, blocked, check_address
from lattice.services.notify_apprise import SCRUBBER, DeliveryFailed, PreparedChannel, clip
from lattice.services.notify_http import GuardedHTTP
from lattice.services.notify_store import DueDelivery, NotifyStore
from lattice.store.clock import from_iso, iso, utcnow

__all__ = ["RETRY_CAP", "ChannelLimiter", "DeliveryWorker", "backoff", "check_destinations"]

log = logging.getLogger(__name__)

RETRY_CAP = 300.0
IDLE = 5.0
MIN_SLEEP = 0.05
LEASE_MARGIN = 30.0
#: egress refusals that retrying cannot fix
_PERMANENT = frozenset(
    {Category.PORT, Category.ADDRESS, Category.HOST, Category.SCHEME, Category.URL}
)

Unseal = Callable[[int, bytes], str]


def backoff(attempts: int, base: float, cap: float = RETRY_CAP) -> float:
    """Delay before the next try after ``attempts`` failed ones: base, 2·base, 4·base …"""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


def check_destinations(
    destinations: Sequence[tuple[str, int]], policy: EgressPolicy, resolver: Resolver
) -> None:
    """Raise ``EgressBlocked`` unless every destination passes the egress policy."""
    # 0. deny by default: a service whose destination we cannot name is refused
    if not destinations:
        raise blocked(
            Category.HOST, "host unknown: the service's destination cannot be checked", None
        )
    for host, port in destinations:
        # 1. the port must be one the operator allows
        if port not in policy.allow_ports:
            raise blocked(Category.PORT, f"port {port} not allowed", None)
        # 2. resolve once (an IP literal is taken as it is)
        try:
            found = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                found = resolver.resolve(host, port)
            except TimeoutError as exc:
                raise blocked(Category.TIMEOUT, "timeout: dns resolution", None) from exc
            except (OSError, UnicodeError, ValueError) as exc:
                raise blocked(Category.DNS, f"dns: cannot resolve {host}", None) from exc
        if not found:
            raise blocked(Category.DNS, f"dns: no address for {host}", None)
        # 3. every address must pass the server's address rule
        for text in found:
            try:
                address = ipaddress.ip_address(text)
            except ValueError as exc:
                raise blocked(Category.DNS, "dns: resolver returned a non-address", None) from exc
            check_address(address, policy.allow_cidrs)


class ChannelLimiter:
    """A token bucket per channel: ``rate_per_minute`` tokens a minute, that many at once."""

    def __init__(self) -> None:
        self._buckets: dict[int, TokenBucket] = {}
        self._lock = threading.Lock()

    def reserve(self, channel_id: int, rate_per_minute: int, now: float) -> float:
        """Take a token (returns 0) or return the seconds until one is due."""
        rate = max(1, rate_per_minute) / 60.0
        with self._lock:
            bucket = self._buckets.get(channel_id)
            if bucket is None or bucket.rate != rate:
                burst = float(max(1, rate_per_minute))
                bucket = TokenBucket(rate=rate, burst=burst, tokens=burst, stamp=now)
                self._buckets[channel_id] = bucket
            if bucket.take(now):
                return 0.0
            return max(MIN_SLEEP, (1.0 - bucket.tokens) / rate)


class DeliveryWorker:
    def __init__(
        self,
        store: NotifyStore,
        *,
        unseal: Unseal,
        audit: AuditSink,
        egress_policy: EgressPolicy,
        retry_base: float,
        max_attempts: int,
        timeout: float,
        resolver: Resolver | None = None,
        egress: EgressGuard | None = None,
        max_workers: int = 8,
        close_timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._unseal = unseal
        self._audit = audit
        self._policy = egress_policy
        self._retry_base = retry_base
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._resolver = resolver
        self._owns_resolver = resolver is None
        self._guard = egress
        self._owns_guard = egress is None
        self._http: GuardedHTTP | None = None
        self._max_workers = max_workers
        self._close_timeout = close_timeout
        self._limiter = ChannelLimiter()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[Future[None], DueDelivery, str]] = {}
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._resolver is None:
            self._resolver = SystemResolver(timeout=self._policy.connect_timeout)
        resolver = self._resolver
        if self._guard is None:
            self._guard = EgressGuard(self._policy, resolver=resolver)
        self._http = GuardedHTTP(
            self._guard,
            insecure=lambda: EgressGuard(self._policy, resolver=resolver, verify=False),
        )
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="lattice-notify")
        self._thread = threading.Thread(
            target=self._loop, name="lattice-notify-dispatch", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop dispatching; let running attempts finish (bounded); release the rest."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._close_timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        with self._lock:
            inflight = list(self._inflight.values())
        for future, item, lease in inflight:
            if future.cancelled():  # claimed but never started: give the claim back
                try:
                    self._store.move(item.id, expected=lease, next_attempt_at=item.next_attempt_at)
                except LatticeError as exc:
                    log.warning("notify worker: releasing a claim: %s", type(exc).__name__)
        wait_futures([f for f, _i, _l in inflight], timeout=self._close_timeout)
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._owns_guard and self._guard is not None:
            self._guard.close()
            self._guard = None
        if self._owns_resolver and isinstance(self._resolver, SystemResolver):
            self._resolver.close()
            self._resolver = None

    # -- dispatching ----------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                delay = self._dispatch()
            except Exception as exc:  # the store may be briefly unavailable; keep going
                log.warning("notify dispatcher: %s", type(exc).__name__)
                delay = IDLE
            self._wake.wait(delay)

    def _dispatch(self) -> float:
        now = utcnow()
        with self._lock:
            busy = set(self._inflight)
        for item in self._store.due(iso(now), busy=busy):
            if self._stop.is_set():
                break
            if item.channel_id is None or item.url_encrypted is None:
                self._fail(item, item.attempts, "channel deleted")
                continue
            if item.channel_id in busy:
                continue
            if not item.enabled:
                self._fail(item, item.attempts, "channel disabled")
                continue
            # rate limit: reschedule, never fail
            wait = self._limiter.reserve(item.channel_id, item.rate_per_minute, time.monotonic())
            if wait > 0:
                later = iso(now + timedelta(seconds=wait))
                self._store.move(item.id, expected=item.next_attempt_at, next_attempt_at=later)
                continue
            lease = iso(now + timedelta(seconds=self._timeout + LEASE_MARGIN))
            if not self._store.move(item.id, expected=item.next_attempt_at, next_attempt_at=lease):
                continue  # another server process claimed it
            busy.add(item.channel_id)
            self._submit(item, lease)
        upcoming = self._store.next_due(busy=busy)
        if upcoming is None:
            return IDLE
        seconds = (from_iso(upcoming) - utcnow()).total_seconds()
        return min(IDLE, max(MIN_SLEEP, seconds))

    def _submit(self, item: DueDelivery, lease: str) -> None:
        pool = self._pool
        if pool is None or item.channel_id is None:
            return
        with self._lock:
            future: Future[None] = pool.submit(self._run, item)
            self._inflight[item.channel_id] = (future, item, lease)

    def _run(self, item: DueDelivery) -> None:
        try:
            self._attempt(item)
        except Exception as exc:  # recording failed (store down): the lease will expire
            log.warning("notify delivery %d: %s", item.id, type(exc).__name__)
        finally:
            with self._lock:
                if item.channel_id is not None:
                    self._inflight.pop(item.channel_id, None)
            self._wake.set()

    # -- one attempt ----------------------------------------------------------

    def _attempt(self, item: DueDelivery) -> None:
        attempts = item.attempts + 1
        resolver, http = self._resolver, self._http
        if item.channel_id is None or item.url_encrypted is None or resolver is None:
            return  # not claimable (see _dispatch); the lease expires
        if http is None:
            return  # closed meanwhile; the lease expires
        try:
            url = self._unseal(item.channel_id, item.url_encrypted)
            SCRUBBER.remember(url)
            channel = PreparedChannel(url)
            check_destinations(channel.target.destinations, self._policy, resolver)
            # Apprise's HTTP goes through the guard; a refused hop fails the
            # attempt even when the plugin reports success or its own error
            with http.attempt(self._timeout) as attempt:
                try:
                    channel.send(title=item.title, body=item.body, timeout=self._timeout)
                except DeliveryFailed:
                    attempt.check()
                    raise
                attempt.check()
        except EgressBlocked as exc:
            self._failed_attempt(item, attempts, exc.message, exc.category in _PERMANENT)
        except DeliveryFailed as exc:
            self._failed_attempt(item, attempts, exc.reason, exc.permanent)
        except SecretError:
            self._failed_attempt(item, attempts, "channel URL cannot be decrypted", True)
        except StoreError:
            raise
        except LatticeError as exc:  # e.g. Apprise no longer accepts the stored URL
            self._failed_attempt(item, attempts, clip(SCRUBBER.scrub(exc.message)), True)
        else:
            self._store.finish(item.id, status="delivered", attempts=attempts, error=None)
            self._record(item, attempts, "allow", "")

    def _failed_attempt(self, item: DueDelivery, attempts: int, reason: str, final: bool) -> None:
        if final or attempts >= self._max_attempts:
            self._fail(item, attempts, reason)
            return
        delay = backoff(attempts, self._retry_base)
        self._store.finish(
            item.id,
            status="pending",
            attempts=attempts,
            error=reason,
            next_attempt_at=iso(utcnow() + timedelta(seconds=delay)),
        )

    def _fail(self, item: DueDelivery, attempts: int, reason: str) -> None:
        self._store.finish(item.id, status="failed", attempts=attempts, error=reason)
        self._record(item, attempts, "deny", reason)

    def _record(self, item: DueDelivery, attempts: int, decision: str, reason: str) -> None:
        self._audit.append(
            actor="system:notify",
            action="notify.delivery",
            target=f"notify-channel:{item.channel_id}",
            decision="allow" if decision == "allow" else "deny",
            reason=reason,
            detail={
                "delivery_id": item.id,
                "message_id": item.message_id,
                "channel_id": item.channel_id,
                "channel": item.channel_name,
                "attempts": attempts,
                "source": item.source,
            },
        )
