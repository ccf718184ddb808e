"""The `reelserve` command: serve | worker | generate | keys | tasks | migrate.

This module only assembles the command groups; each lives in its own module: `serve.py` (serve,
migrate), `worker.py`, `generate.py`, `keys.py`, `tasks.py`. Operators script these, so the
forms are fixed: `reelserve serve --host H --port P --data-dir DIR` and `reelserve keys create
(--test|--live) [--name N] [--max-running N] [--rate N] [--budget X] [--models a,b] [--admin]
--data-dir DIR`, which prints the new key alone on the last line of standard output (its webhook
signing secret on the line before); `keys update` and `keys show` are in `keys.py`.
"""

from __future__ import annotations

import typer

from reelserve.cli.generate import generate_command
from reelserve.cli.keys import keys_app, mint_key, mint_key_with_webhook_secret
from reelserve.cli.serve import migrate, serve
from reelserve.cli.tasks import tasks_app
from reelserve.cli.worker import worker_command

__all__ = ["app", "main", "mint_key", "mint_key_with_webhook_secret"]

app = typer.Typer(
    name="reelserve",
    help="Self-hostable video-generation API server.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("generate")(generate_command)
app.command("serve")(serve)
app.command("worker")(worker_command)
app.command("migrate")(migrate)
app.add_typer(keys_app, name="keys")
app.add_typer(tasks_app, name="tasks")


def main() -> None:
    app()
