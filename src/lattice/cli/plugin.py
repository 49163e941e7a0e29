"""``lattice plugin``: keygen, sign, verify and inspect plugin bundles.

``verify`` uses the same reading and verification code as the server
(:func:`lattice.plugins.loader.load_bundle`).  Errors print one line to stderr and
exit 1; no tracebacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from lattice.errors import LatticeError
from lattice.plugins.capabilities import allowed_types, risk_of
from lattice.plugins.loader import load_bundle, read_bundle
from lattice.plugins.manifest import Manifest
from lattice.plugins.signing import add_to_trust_file, keygen, sign_bundle
from lattice.plugins.trust import TrustPolicy, Verifier

__all__ = ["TRUST_ENV", "plugin_app"]

TRUST_ENV = "LATTICE_PLUGIN_TRUST"

plugin_app = typer.Typer(
    name="plugin",
    help="Create publisher keys, sign, verify and inspect plugin bundles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into 'error: ...' on stderr and exit code 1."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except LatticeError as exc:
            typer.echo(f"error: {exc}", err=True)
        except OSError as exc:
            typer.echo(f"error: {exc.strerror or exc}", err=True)
        raise typer.Exit(1)

    return wrapper


def _policy(trust: Path | None) -> TrustPolicy:
    if trust is None and os.environ.get(TRUST_ENV):
        trust = Path(os.environ[TRUST_ENV])
    if trust is None:
        return TrustPolicy.default()
    return TrustPolicy.from_file(trust)


BundleArg = Annotated[Path, typer.Argument(help="Bundle directory (manifest.json + artifact).")]
TrustOpt = Annotated[
    Path | None,
    typer.Option(help=f"Trust policy JSON file (default: ${TRUST_ENV}, else trust nobody)."),
]


@plugin_app.command("keygen")
@_friendly
def keygen_cmd(
    publisher: Annotated[str, typer.Option(help="Publisher id, e.g. acme.dev.")],
    out: Annotated[Path, typer.Option(help="Directory for <publisher>.key and .pub.")],
    trust: Annotated[
        Path | None,
        typer.Option(help="Also add the public key to this trust file (default: none)."),
    ] = None,
) -> None:
    """Create an Ed25519 publisher key (private key file mode 0600, never overwritten)."""
    pair = keygen(out, publisher)
    typer.echo(f"private key: {pair.private_key_path}", err=True)
    if trust is not None:
        add_to_trust_file(trust, publisher, pair.public_key_b64)
        typer.echo(f"trusted {publisher!r} in {trust}", err=True)
    typer.echo(pair.public_key_b64)


@plugin_app.command("sign")
@_friendly
def sign_cmd(
    bundle: BundleArg,
    key: Annotated[Path, typer.Option(help="Private key file from 'plugin keygen'.")],
    publisher: Annotated[
        str | None, typer.Option(help="Publisher id (default: the manifest's).")
    ] = None,
) -> None:
    """Fill in digest, publisher and signature of a bundle's manifest."""
    m = sign_bundle(bundle, key, publisher)
    typer.echo(f"signed {m.id} {m.version} as {m.publisher} (sha256 {m.digest_sha256})")


@plugin_app.command("verify")
@_friendly
def verify_cmd(bundle: BundleArg, trust: TrustOpt = None) -> None:
    """Verify a bundle exactly as the server would (exit 0 ok, 1 refused)."""
    plugin = load_bundle(bundle, Verifier(_policy(trust)))
    m = plugin.manifest
    how = f"signed by {m.publisher}" if plugin.signed else "UNSIGNED (allowed by policy)"
    typer.echo(f"ok: {m.id} {m.version} ({m.type}) {how}")
    typer.echo(f"sha256: {plugin.digest_sha256}")
    typer.echo(f"capabilities: {', '.join(m.capabilities)}")


@plugin_app.command("inspect")
@_friendly
def inspect_cmd(bundle: BundleArg) -> None:
    """Show a bundle's manifest, capability risks and tiers (no trust decision)."""
    raw = read_bundle(bundle)
    m = Manifest.from_json(raw.manifest_bytes)
    for name in ("id", "name", "type", "version", "entrypoint", "publisher"):
        typer.echo(f"{name + ':':12}{getattr(m, name) or '-'}")
    ok = "matches" if raw.artifact_sha256 == m.digest_sha256 else "MISMATCH"
    typer.echo(f"{'digest:':12}{m.digest_sha256} (artifact {ok}, {raw.artifact_size} bytes)")
    typer.echo(f"{'signature:':12}{'present' if m.signed else 'none'}")
    typer.echo("capabilities:")
    for cap in m.capabilities:
        typer.echo(f"  {cap:16}{risk_of(cap)!s:7}tiers: {', '.join(allowed_types(cap))}")
