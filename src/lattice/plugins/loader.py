"""The plugin loader: the only place a :class:`LoadedPlugin` is made.

Layout: each non-hidden subdirectory ``<plugin_dir>/<bundle>/`` holds
``manifest.json`` and ``artifact``.  Reading a bundle:

1. open the bundle directory relative to an open ``plugin_dir`` descriptor with
   ``O_NOFOLLOW | O_DIRECTORY`` (a symlinked bundle is rejected);
2. open ``manifest.json`` and ``artifact`` relative to that descriptor with
   ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat`` the *opened* descriptors: regular files
   only, size caps checked before and while reading (no TOCTOU window);
3. decode the manifest strictly, hash the artifact in 1 MiB chunks;
4. hand both to the :class:`~lattice.plugins.trust.Verifier`.

Rescans reuse a bundle's last verdict (loaded or rejected) only when nothing
it was made from can have changed: the manifest bytes (always re-read, step 2)
are equal, the verifier and its trust policy are the same objects, and the
opened artifact's ``fstat`` identity ``(st_dev, st_ino, st_size, st_mtime_ns,
st_ctime_ns)`` is equal.  ``st_ctime`` is set by the kernel on every write,
truncate, rename onto and ``utime``, and no user can set it, so rewriting an
artifact with the same size and a restored mtime, or swapping in another file,
is still hashed again.  An artifact changed less than ``SETTLE_NS`` before it
was read is not cached at all (timestamps come from a coarse clock, so a
rewrite in the same tick could keep every field); it is hashed on every scan
until it has settled.  The one thing a timestamp does not see is a write
through a shared mapping to a page that is already dirty; it never reaches a
plugin unverified, because runners read the artifact through
:meth:`LoadedPlugin.read_artifact`, which hashes the bytes it returns.

A bad bundle never stops a scan: LatticeError and OSError become a
:class:`Rejection`.  When several verified bundles claim the same id (an
unverified bundle cannot knock out a verified one), the bundle from the
publisher on the id's lifecycle record (``owners``, passed in by the platform)
keeps it if exactly one bundle is from that publisher; the others are rejected
with a reason naming the bundle and publisher that won.  Otherwise all of them
are rejected.  So a squatting duplicate cannot take out the rightful plugin.
(A namespace-bound publisher also beats an unbound one, earlier: the verifier
refuses an id inside a bound namespace from anyone else, so such a squatter
never reaches duplicate resolution.)  Audit events are written
only when a bundle's outcome changes.  Reasons and audit details carry bundle
directory names, never filesystem paths.  ``plugin_dir`` itself may be a symlink
(operator configuration); nothing inside it may be.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lattice.core.auditsink import AuditSink
from lattice.errors import BundleError, LatticeError, VerificationError
from lattice.plugins.manifest import Manifest
from lattice.plugins.trust import TrustPolicy, Verification, Verifier

__all__ = [
    "ARTIFACT_FILE",
    "AUDIT_ACTOR",
    "MANIFEST_FILE",
    "BundleLimits",
    "LoadedPlugin",
    "PluginLoader",
    "RawBundle",
    "Rejection",
    "ScanDiff",
    "load_bundle",
    "read_bundle",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
ARTIFACT_FILE = "artifact"
AUDIT_ACTOR = "system:plugin-loader"
CHUNK = 1024 * 1024
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: an artifact whose ctime or mtime is closer than this to the moment it was read
#: is hashed again on the next scan instead of being cached (module docstring)
SETTLE_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class BundleLimits:
    max_manifest_bytes: int = 64 * 1024
    max_artifact_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RawBundle:
    """A bundle's bytes, read safely but not yet decoded or verified."""

    name: str
    manifest_bytes: bytes
    artifact_sha256: str
    artifact_size: int


#: what an artifact's fstat says about its identity and content
FileIdentity = tuple[int, int, int, int, int]


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A bundle's last scan outcome and everything it was derived from."""

    artifact: FileIdentity
    manifest: bytes
    verifier: Verifier
    policy: TrustPolicy
    outcome: LoadedPlugin | str


def display_name(name: str) -> str:
    """A bundle directory name safe for reasons and audit (escapes odd characters)."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def _describe(exc: OSError, label: str, name: str, dir_fd: int) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return f"{label} is a symlink"
        except OSError:
            pass
    if exc.errno == errno.ENOENT:
        return f"{label} is missing"
    if exc.errno == errno.ENOTDIR:
        return f"{label} is not a directory"
    return f"cannot open {label}: {os.strerror(exc.errno or 0)}"


@contextmanager
def _open_at(dir_fd: int, name: str, label: str, *, directory: bool = False) -> Iterator[int]:
    flags = _OPEN | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise BundleError(_describe(exc, label, name, dir_fd)) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _regular_size(fd: int, label: str, limit: int) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{label} is not a regular file")
    if st.st_size > limit:
        raise BundleError(f"{label} is {st.st_size} bytes, over the {limit}-byte limit")
    return st.st_size


def _read_small(fd: int, label: str, limit: int) -> bytes:
    """Read a whole small file (the manifest), at most ``limit`` bytes."""
    _regular_size(fd, label, limit)
    data = bytearray()
    while chunk := os.read(fd, limit + 1 - len(data)):
        data += chunk
    if len(data) > limit:
        raise BundleError(f"{label} grew over the {limit}-byte limit while reading")
    return bytes(data)


def _hash_capped(
    fd: int, label: str, limit: int, buf: bytearray, keep: list[bytes] | None = None
) -> tuple[str, int]:
    """Stream ``fd`` through sha256 in ``len(buf)`` chunks; return (hex digest, size).

    Enforces ``limit`` while reading too, in case the file grows after fstat; appends
    the chunks to ``keep`` when given.
    """
    _regular_size(fd, label, limit)
    digest = hashlib.sha256()
    view = memoryview(buf)
    total = 0
    while n := os.readv(fd, [buf]):
        total += n
        if total > limit:
            raise BundleError(f"{label} grew over the {limit}-byte limit while reading")
        digest.update(view[:n])
        if keep is not None:
            keep.append(bytes(view[:n]))
    return digest.hexdigest(), total


def _read_bundle_at(
    parent_fd: int, name: str, limits: BundleLimits, buf: bytearray | None = None
) -> RawBundle:
    with _open_at(parent_fd, name, "bundle directory", directory=True) as bundle_fd:
        with _open_at(bundle_fd, MANIFEST_FILE, MANIFEST_FILE) as fd:
            manifest = _read_small(fd, MANIFEST_FILE, limits.max_manifest_bytes)
        with _open_at(bundle_fd, ARTIFACT_FILE, ARTIFACT_FILE) as fd:
            digest, size = _hash_capped(
                fd, ARTIFACT_FILE, limits.max_artifact_bytes, buf or bytearray(CHUNK)
            )
    return RawBundle(display_name(name), manifest, digest, size)


@contextmanager
def _open_parent(bundle_dir: Path) -> Iterator[tuple[int, str]]:
    path = Path(os.path.abspath(bundle_dir))
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(
            f"cannot open bundle parent directory: {os.strerror(exc.errno or 0)}"
        ) from exc
    try:
        yield fd, path.name
    finally:
        os.close(fd)


def read_bundle(bundle_dir: Path, limits: BundleLimits | None = None) -> RawBundle:
    """Read one bundle directory safely (no decoding, no verification)."""
    with _open_parent(bundle_dir) as (fd, name):
        return _read_bundle_at(fd, name, limits or BundleLimits())


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A verified bundle.  ``bundle_path`` is server-private: never show it."""

    verification: Verification
    bundle: str
    bundle_path: Path = field(repr=False)
    max_artifact_bytes: int = field(default=64 * 1024 * 1024, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.verification, Verification):
            raise VerificationError("a LoadedPlugin needs a Verification from the Verifier")

    @property
    def id(self) -> str:
        return self.verification.manifest.id

    @property
    def manifest(self) -> Manifest:
        return self.verification.manifest

    @property
    def digest_sha256(self) -> str:
        return self.verification.digest_sha256

    @property
    def signed(self) -> bool:
        return self.verification.signed

    def read_artifact(self) -> bytes:
        """Re-read the artifact and re-check its digest against the verified manifest."""
        with (
            _open_parent(self.bundle_path) as (parent_fd, name),
            _open_at(parent_fd, name, "bundle directory", directory=True) as bundle_fd,
            _open_at(bundle_fd, ARTIFACT_FILE, ARTIFACT_FILE) as fd,
        ):
            chunks: list[bytes] = []
            digest, _ = _hash_capped(
                fd, ARTIFACT_FILE, self.max_artifact_bytes, bytearray(CHUNK), chunks
            )
        if not hmac.compare_digest(digest.encode(), self.digest_sha256.encode()):
            raise VerificationError(
                "artifact changed on disk since it was verified", plugin_id=self.id
            )
        return b"".join(chunks)

    def to_public_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": m.id,
            "name": m.name,
            "type": m.type,
            "version": m.version,
            "entrypoint": m.entrypoint,
            "publisher": m.publisher,
            "capabilities": [
                {"name": c, "risk": str(r)} for c, r in self.verification.capabilities.items()
            ],
            "digest_sha256": self.digest_sha256,
            "signed": self.signed,
            "bundle": self.bundle,
        }


def _verify_raw(raw: RawBundle, verifier: Verifier) -> Verification:
    return verifier.verify_digest(Manifest.from_json(raw.manifest_bytes), raw.artifact_sha256)


def load_bundle(
    bundle_dir: Path, verifier: Verifier, limits: BundleLimits | None = None
) -> LoadedPlugin:
    """Read, decode and verify one bundle directory (the CLI uses this too)."""
    limits = limits or BundleLimits()
    raw = read_bundle(bundle_dir, limits)
    return LoadedPlugin(
        _verify_raw(raw, verifier),
        raw.name,
        Path(os.path.abspath(bundle_dir)),
        limits.max_artifact_bytes,
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    bundle: str
    reason: str
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class ScanDiff:
    """What one scan changed.  Falsy when nothing did."""

    added: tuple[str, ...] = ()  # plugin ids newly loaded
    changed: tuple[str, ...] = ()  # still loaded, different bundle/manifest/digest
    removed: tuple[str, ...] = ()  # no longer loaded
    rejected: tuple[Rejection, ...] = ()  # newly rejected, or for a new reason
    cleared: tuple[str, ...] = ()  # bundle names no longer rejected

    def __bool__(self) -> bool:
        return any((self.added, self.changed, self.removed, self.rejected, self.cleared))


def _who(p: LoadedPlugin) -> str:
    publisher = p.manifest.publisher
    return f"publisher {publisher!r}" if publisher else "no publisher (unsigned)"


def _fingerprint(p: LoadedPlugin) -> tuple[str, Manifest, str]:
    return (p.bundle, p.manifest, p.digest_sha256)


class PluginLoader:
    def __init__(
        self,
        *,
        plugin_dir: Path,
        verifier: Verifier,
        audit: AuditSink,
        max_manifest_bytes: int = 64 * 1024,
        max_artifact_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.verifier = verifier
        self._audit = audit
        self.limits = BundleLimits(max_manifest_bytes, max_artifact_bytes)
        self._lock = threading.Lock()
        self._loaded: Mapping[str, LoadedPlugin] = MappingProxyType({})
        self._rejected: dict[str, Rejection] = {}
        self._buf = bytearray(CHUNK)  # reused by scan(), under the lock
        self._verdicts: dict[str, _Verdict] = {}  # bundle dir name -> last verdict

    @property
    def loaded(self) -> Mapping[str, LoadedPlugin]:
        """id -> LoadedPlugin; a read-only snapshot swapped atomically by scan()."""
        return self._loaded

    @property
    def rejected(self) -> list[Rejection]:
        return list(self._rejected.values())

    def _read_all(self) -> dict[str, LoadedPlugin | str]:
        try:
            dir_fd = os.open(self.plugin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BundleError(
                f"cannot open plugin directory: {os.strerror(exc.errno or 0)}"
            ) from exc
        results: dict[str, LoadedPlugin | str] = {}
        verdicts: dict[str, _Verdict] = {}
        try:
            for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
                name = display_name(entry.name)
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    results[name] = "bundle directory is a symlink"
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    results[name] = self._read_one(dir_fd, entry.name, name, verdicts)
                except LatticeError as exc:
                    results[name] = str(exc)
                except OSError as exc:
                    results[name] = f"cannot read bundle: {os.strerror(exc.errno or 0)}"
        finally:
            os.close(dir_fd)
        self._verdicts = verdicts  # bundles gone from the directory are forgotten
        return results

    def _read_one(
        self, dir_fd: int, entry: str, name: str, verdicts: dict[str, _Verdict]
    ) -> LoadedPlugin | str:
        """One bundle's outcome: its last verdict if nothing it came from changed,
        else read, hash and verify it (steps 1-4 of the module docstring)."""
        limits = self.limits
        verifier, policy = self.verifier, self.verifier.policy
        with _open_at(dir_fd, entry, "bundle directory", directory=True) as bundle_fd:
            with _open_at(bundle_fd, MANIFEST_FILE, MANIFEST_FILE) as fd:
                manifest = _read_small(fd, MANIFEST_FILE, limits.max_manifest_bytes)
            with _open_at(bundle_fd, ARTIFACT_FILE, ARTIFACT_FILE) as fd:
                read_at = time.time_ns()
                before = os.fstat(fd)
                key = _identity(before)
                old = self._verdicts.get(entry)
                if (
                    old is not None
                    and old.artifact == key
                    and old.manifest == manifest
                    and old.verifier is verifier
                    and old.policy is policy
                ):
                    verdicts[entry] = old
                    return old.outcome
                digest, size = _hash_capped(fd, ARTIFACT_FILE, limits.max_artifact_bytes, self._buf)
                after = os.fstat(fd)
        raw = RawBundle(name, manifest, digest, size)
        outcome: LoadedPlugin | str
        try:
            outcome = LoadedPlugin(
                _verify_raw(raw, verifier),
                name,
                self.plugin_dir / entry,
                limits.max_artifact_bytes,
            )
        except LatticeError as exc:
            outcome = str(exc)
        settled = read_at - SETTLE_NS
        if (
            _identity(after) == key
            and size == before.st_size
            and before.st_ctime_ns < settled
            and before.st_mtime_ns < settled
        ):
            verdicts[entry] = _Verdict(key, manifest, verifier, policy, outcome)
        return outcome

    @classmethod
    def _reject_duplicates(
        cls, results: dict[str, LoadedPlugin | str], owners: Mapping[str, str]
    ) -> None:
        by_id: dict[str, list[LoadedPlugin]] = {}
        for outcome in results.values():
            if isinstance(outcome, LoadedPlugin):
                by_id.setdefault(outcome.id, []).append(outcome)
        for pid, claims in by_id.items():
            if len(claims) < 2:
                continue
            winner, why = cls._rightful(pid, claims, owners)
            for p in claims:
                if p is winner:
                    continue
                if winner is not None:
                    results[p.bundle] = (
                        f"duplicate plugin id {pid!r}: bundle {winner.bundle!r} from "
                        f"{_who(winner)} keeps it ({why}); this bundle is from {_who(p)}"
                    )
                else:
                    others = ", ".join(repr(o.bundle) for o in claims if o is not p)
                    results[p.bundle] = f"duplicate plugin id {pid!r} (also in bundle {others})"

    @staticmethod
    def _rightful(
        pid: str, claims: list[LoadedPlugin], owners: Mapping[str, str]
    ) -> tuple[LoadedPlugin | None, str]:
        """The one claim that keeps a contested id, and why (see the module docstring)."""
        # 1. the publisher the lifecycle record names, if exactly one claim is from it
        owner = owners.get(pid)
        if owner is not None:
            recorded = [p for p in claims if p.manifest.publisher == owner]
            if len(recorded) == 1:
                return recorded[0], "its publisher is the one on the plugin's record"
        # 2. no rightful claim: everyone loses
        return None, ""

    def scan(self, owners: Mapping[str, str] | None = None) -> ScanDiff:
        """Rescan plugin_dir; audit and return what changed.

        ``owners`` maps plugin ids to the publisher on their lifecycle record; it
        decides duplicate ids (see the module docstring).
        """
        with self._lock:
            now = datetime.now(UTC)
            results = self._read_all()
            self._reject_duplicates(results, owners or {})
            new_loaded = {o.id: o for o in results.values() if isinstance(o, LoadedPlugin)}
            new_rejected: dict[str, Rejection] = {}
            fresh: list[Rejection] = []
            for bundle, outcome in results.items():
                if isinstance(outcome, str):
                    old = self._rejected.get(bundle)
                    if old is not None and old.reason == outcome:
                        new_rejected[bundle] = old
                    else:
                        new_rejected[bundle] = Rejection(bundle, outcome, now)
                        fresh.append(new_rejected[bundle])
            old_loaded = self._loaded
            diff = ScanDiff(
                added=tuple(i for i in new_loaded if i not in old_loaded),
                changed=tuple(
                    i
                    for i, p in new_loaded.items()
                    if i in old_loaded and _fingerprint(old_loaded[i]) != _fingerprint(p)
                ),
                removed=tuple(i for i in old_loaded if i not in new_loaded),
                rejected=tuple(fresh),
                cleared=tuple(b for b in self._rejected if b not in new_rejected),
            )
            # audit first: no state change becomes visible without its event
            self._write_audit(diff, old_loaded, new_loaded, new_rejected)
            self._loaded = MappingProxyType(new_loaded)
            self._rejected = new_rejected
            return diff

    def _write_audit(
        self,
        diff: ScanDiff,
        old: Mapping[str, LoadedPlugin],
        new: Mapping[str, LoadedPlugin],
        rejected: Mapping[str, Rejection],
    ) -> None:
        for pid in diff.removed:
            gone = old[pid].bundle
            why = "bundle rejected on rescan" if gone in rejected else "bundle removed"
            self._audit.append(
                actor=AUDIT_ACTOR,
                action="plugin.unloaded",
                target=pid,
                reason=why,
                detail={"bundle": gone},
            )
        for pid in (*diff.added, *diff.changed):
            p = new[pid]
            self._audit.append(
                actor=AUDIT_ACTOR,
                action="plugin.loaded",
                target=pid,
                decision="allow",
                detail={
                    "version": p.manifest.version,
                    "digest": p.digest_sha256,
                    "capabilities": list(p.manifest.capabilities),
                    "signed": p.signed,
                    "publisher": p.manifest.publisher,
                    "bundle": p.bundle,
                },
            )
        for r in diff.rejected:
            self._audit.append(
                actor=AUDIT_ACTOR,
                action="plugin.rejected",
                target=r.bundle,
                decision="deny",
                reason=r.reason,
            )

    def watch(
        self,
        stop: threading.Event,
        on_change: Callable[[ScanDiff], None],
        *,
        owners: Callable[[], Mapping[str, str]] | None = None,
        debounce_ms: int = 500,
        poll_seconds: float = 1.0,
    ) -> None:
        """Scan now, then rescan whenever plugin_dir changes, until ``stop`` is set.

        Blocks; run it in a thread.  ``on_change`` gets every non-empty diff.  While
        plugin_dir does not exist it is polled every ``poll_seconds``.
        """
        import watchfiles

        def rescan() -> None:
            try:
                diff = self.scan(owners() if owners is not None else None)
            except LatticeError as exc:
                log.warning("plugin rescan failed: %s", exc)
                return
            if diff:
                on_change(diff)

        rescan()
        while not stop.is_set():
            if not self.plugin_dir.is_dir():
                stop.wait(poll_seconds)
                rescan()
                continue
            try:
                for _ in watchfiles.watch(
                    self.plugin_dir,
                    watch_filter=None,
                    debounce=debounce_ms,
                    stop_event=stop,
                    raise_interrupt=False,
                ):
                    rescan()
                    if not self.plugin_dir.is_dir():
                        break
            except (OSError, RuntimeError) as exc:  # watcher lost its directory
                log.warning("plugin directory watch restarted: %s", exc)
                stop.wait(poll_seconds)
                rescan()
