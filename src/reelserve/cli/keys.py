"""`reelserve keys create | update | show | rotate-webhook-secret | list | revoke`: API keys and
their limits, in the store.

Fixed forms, which operators script:
- `keys create (--test|--live) [--name N] [--max-running N] [--rate N] [--budget X]
  [--models a,b] [--admin] --data-dir DIR` prints the new key alone on the last line of standard
  output (its webhook signing secret on the line before); `--admin` makes a key for the admin
  API only (no mode needed, no limits);
- `keys update KEY [--max-running N] [--rate N] [--budget X] [--models a,b] [--clear
  max-running,rate,budget,models]`: the limits given change, `--clear` removes those named, the
  others stay as they were;
- `keys show KEY`: the key, its limits and its ledger balance: spent, reserved and left.

A bad value stops the command with a message naming the option and status 2. A change applies
on running servers within a few seconds (their key cache, `core.access.AUTH_CACHE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from reelserve.cli.common import DataDir, err, run_on_service, settings_for, using_service, when
from reelserve.core.tasks import Tasks
from reelserve.domain.errors import InvalidRequest, NotFound
from reelserve.domain.limits import KeyLimits, parse_limit_changes
from reelserve.settings import Settings
from reelserve.store.keys import ApiKey
from reelserve.store.ledger import Balance

keys_app = typer.Typer(help="Create, update, show, list and revoke API keys.", no_args_is_help=True)

# CLI option -> the limit it sets.
OPTIONS = {
    "max-running": "max_running",
    "rate": "rate_per_minute",
    "budget": "budget",
    "models": "models",
}

MaxRunning = Annotated[
    int | None, typer.Option("--max-running", help="Tasks of the key processing at once.")
]
Rate = Annotated[int | None, typer.Option("--rate", help="Submits accepted in any 60 seconds.")]
Budget = Annotated[float | None, typer.Option("--budget", help="Spend limit, price currency.")]
Models = Annotated[
    str | None, typer.Option("--models", help="Allowed model ids, comma-separated (a,b).")
]


async def mint_key(settings: Settings, mode: str, name: str) -> str:
    return (await mint_key_with_webhook_secret(settings, mode, name))[0]


async def mint_key_with_webhook_secret(
    settings: Settings,
    mode: str,
    name: str,
    *,
    changes: dict[str, Any] | None = None,
    admin: bool = False,
) -> tuple[str, str]:
    """A new API key and its webhook signing secret (`whsec_...`), each shown once."""
    _, secret, webhook_secret = await using_service(
        settings,
        lambda service: service.admin.create(mode, name, changes or {}, admin=admin),  # type: ignore[arg-type]
    )
    return secret, webhook_secret


def _changes(
    settings: Settings,
    max_running: int | None,
    rate: int | None,
    budget: float | None,
    models: str | None,
    clear: str | None = None,
) -> dict[str, Any]:
    """The limit options given, checked (status 2 naming the option on a bad value)."""
    given: dict[str, object] = {}
    for option, value in (("max-running", max_running), ("rate", rate), ("budget", budget)):
        if value is not None:
            given[OPTIONS[option]] = value
    if models is not None:
        given["models"] = [m.strip() for m in models.split(",") if m.strip()]
    for option in [c.strip() for c in (clear or "").split(",") if c.strip()]:
        if option not in OPTIONS:
            _fail(f"--clear: {option!r} is not a limit; expected any of {', '.join(OPTIONS)}")
        if OPTIONS[option] in given:
            _fail(f"--{option} is both given and cleared")
        given[OPTIONS[option]] = None
    try:
        return parse_limit_changes(given, settings.model_map())
    except InvalidRequest as exc:
        option = next((o for o, f in OPTIONS.items() if f == exc.param), str(exc.param))
        _fail(f"--{option}: {exc.message}")


def _fail(message: str) -> NoReturn:
    """A bad value: the message on standard error (plain, unwrapped), status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@keys_app.command("create")
def keys_create(
    test: Annotated[bool, typer.Option("--test", help="A test key: sandbox only, free.")] = False,
    live: Annotated[bool, typer.Option("--live", help="A live key: real providers.")] = False,
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
    max_running: MaxRunning = None,
    rate: Rate = None,
    budget: Budget = None,
    models: Models = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: the admin API only, no tasks.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Mint an API key; prints it alone on the last line (shown once, stored hashed)."""
    if (test and live) or not (test or live or admin):
        err.print("[red]choose exactly one of --test or --live[/]")
        raise typer.Exit(2)
    settings = settings_for(data_dir)
    changes = _changes(settings, max_running, rate, budget, models)
    if admin and changes:
        _fail("an admin key has no limits: it cannot submit tasks")
    secret, webhook_secret = asyncio.run(
        mint_key_with_webhook_secret(
            settings, "test" if test else "live", name, changes=changes, admin=admin
        )
    )
    err.print("Store this key and its webhook signing secret now: they are shown only once.")
    print(f"webhook signing secret: {webhook_secret}")
    print(secret)


@keys_app.command("update")
def keys_update(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or its shown prefix.")],
    max_running: MaxRunning = None,
    rate: Rate = None,
    budget: Budget = None,
    models: Models = None,
    clear: Annotated[
        str | None,
        typer.Option("--clear", help="Limits to remove, comma-separated: " + ",".join(OPTIONS)),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Change a key's limits: those given are set, those in --clear removed, others kept."""
    settings = settings_for(data_dir)
    changes = _changes(settings, max_running, rate, budget, models, clear)
    if not changes:
        _fail("nothing to change: give a limit option or --clear")

    try:
        updated = asyncio.run(
            using_service(settings, lambda service: service.admin.update(key, changes))
        )
    except NotFound:
        err.print(f"[red]no single key matches {key!r}[/]")
        raise typer.Exit(1) from None
    except InvalidRequest as exc:
        _fail(exc.message)
    print(f"updated {updated.id} ({updated.prefix}...): {_compact(updated.limits) or 'no limits'}")


def _shown(value: object, none: str = "none") -> str:
    if value is None:
        return none
    if isinstance(value, tuple):
        return ",".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _compact(limits: KeyLimits) -> str:
    """The limits set, as `keys list` shows them: running=2 rate=10/min budget=5 models=a,b."""
    parts = []
    if limits.max_running is not None:
        parts.append(f"running={limits.max_running}")
    if limits.rate_per_minute is not None:
        parts.append(f"rate={limits.rate_per_minute}/min")
    if limits.budget is not None:
        parts.append(f"budget={_shown(limits.budget)}")
    if limits.models is not None:
        parts.append(f"models={_shown(limits.models)}")
    return " ".join(parts)


@keys_app.command("show")
def keys_show(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or its shown prefix.")],
    data_dir: DataDir = None,
) -> None:
    """Show a key: its limits and its balance on the ledger: what its finished tasks were
    charged (spent), what its unfinished ones hold (reserved) and what is left of its budget."""

    async def show(service: Any) -> tuple[ApiKey, Balance] | None:
        found: ApiKey | None = await service.keys.find(key)
        if found is None:
            return None
        tasks: Tasks = service.tasks
        return found, await tasks.ledger.balance(found.id, tasks.pricing.currency)

    shown = run_on_service(data_dir, show)
    if shown is None:
        err.print(f"[red]no single key matches {key!r}[/]")
        raise typer.Exit(1)
    found, balance = shown
    limits = found.limits
    left = balance.left
    lines = [
        ("id", found.id),
        ("prefix", found.prefix + "..."),
        ("mode", found.mode),
        ("name", found.name),
        ("admin", "yes" if found.admin else "no"),
        ("created", when(found.created_at)),
        ("revoked", when(found.revoked_at) or "no"),
        ("max running", _shown(limits.max_running)),
        ("rate per minute", _shown(limits.rate_per_minute)),
        ("budget", _shown(limits.budget, "unlimited")),
        ("models", _shown(limits.models, "all")),
        ("currency", balance.currency),
        ("spent", f"{balance.spent:g}"),
        ("reserved", f"{balance.reserved:g}"),
        ("left", "unlimited" if left is None else f"{left:g}"),
    ]
    for label, value in lines:
        print(f"{label}: {value}")


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
    """List API keys with their limits (prefixes only; secrets are never stored)."""
    table = Table("id", "prefix", "mode", "name", "limits", "created", "revoked")
    for key in run_on_service(data_dir, lambda service: service.keys.list_keys()):
        table.add_row(
            key.id,
            key.prefix + "...",
            "admin" if key.admin else key.mode,
            key.name,
            _compact(key.limits),
            when(key.created_at),
            when(key.revoked_at) if key.revoked_at else "",
        )
    Console(width=200).print(table)


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
