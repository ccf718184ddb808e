"""`reelserve keys create | rotate-webhook-secret | list | revoke`: API keys, in the store.

`keys create (--test|--live) [--name N]` prints the new key alone on the last line of standard
output (its webhook signing secret on the line before): operators script it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from reelserve.cli.common import DataDir, err, run_on_service, settings_for, using_service, when
from reelserve.settings import Settings

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


async def mint_key(settings: Settings, mode: str, name: str) -> str:
    return (await mint_key_with_webhook_secret(settings, mode, name))[0]


async def mint_key_with_webhook_secret(settings: Settings, mode: str, name: str) -> tuple[str, str]:
    """A new API key and its webhook signing secret (`whsec_...`), each shown once."""
    _, secret, webhook_secret = await using_service(
        settings,
        lambda service: service.access.create_key(mode, name),  # type: ignore[arg-type]
    )
    return secret, webhook_secret


@keys_app.command("create")
def keys_create(
    test: Annotated[bool, typer.Option("--test", help="A test key: sandbox only, free.")] = False,
    live: Annotated[bool, typer.Option("--live", help="A live key: real providers.")] = False,
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Mint an API key; prints it alone on the last line (shown once, stored hashed)."""
    if test == live:
        err.print("[red]choose exactly one of --test or --live[/]")
        raise typer.Exit(2)
    settings = settings_for(data_dir)
    secret, webhook_secret = asyncio.run(
        mint_key_with_webhook_secret(settings, "test" if test else "live", name)
    )
    err.print("Store this key and its webhook signing secret now: they are shown only once.")
    print(f"webhook signing secret: {webhook_secret}")
    print(secret)


@keys_app.command("rotate-webhook-secret")
def keys_rotate_webhook_secret(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or its shown prefix.")],
    data_dir: DataDir = None,
) -> None:
    """Give a key a new webhook signing secret (printed once); the old one stops at once."""
    rotated = run_on_service(data_dir, lambda service: service.webhooks.rotate_secret(key))
    if rotated is None:
        err.print(f"[red]no single key matches {key!r}[/]")
        raise typer.Exit(1)
    err.print(f"New webhook signing secret of {rotated[0]}; store it now: it is shown only once.")
    print(rotated[1])


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List API keys (prefixes only; secrets are never stored)."""
    table = Table("id", "prefix", "mode", "name", "created", "revoked")
    for key in run_on_service(data_dir, lambda service: service.keys.list_keys()):
        table.add_row(
            key.id,
            key.prefix + "...",
            key.mode,
            key.name,
            when(key.created_at),
            when(key.revoked_at) if key.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or its shown prefix.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key (takes effect within a few seconds on running servers)."""
    revoked = run_on_service(data_dir, lambda service: service.keys.revoke(key))
    if revoked is None:
        err.print(f"[red]no single key matches {key!r}[/]")
        raise typer.Exit(1)
    print(f"revoked {revoked.id} ({revoked.prefix}...)")
