"""`reelserve generate "prompt" -o out.mp4`: one generation from a terminal, through the SDK.

It submits to a server (`--url` / `REELSERVE_URL`, `--key` / `REELSERVE_KEY`), shows the task's
status, progress and an ETA while it runs (a Rich progress bar on a terminal, one line per change
otherwise), downloads the result and prints the saved path(s) on standard output, one per line.
Ctrl-C cancels the task on the server before exiting. Everything but the saved paths goes to
standard error, so `path=$(reelserve generate ...)` works.

Exit status: 0 saved; 1 the server refused the request, the task failed or was cancelled, or the
server could not be reached; 2 bad options; 130 interrupted (the task was cancelled).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from reelserve.client import Client, Task

DEFAULT_MODEL = "veo3.1-fast-official"
URL_PREFIXES = ("http://", "https://", "data:")


def generate_command(
    prompt: Annotated[str, typer.Argument(help="What the video shows.", show_default=False)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to save the video. With --samples N the others go beside it: "
            "out.mp4, out-1.mp4, out-2.mp4...",
        ),
    ] = Path("out.mp4"),
    model: Annotated[str, typer.Option(help="A model id (GET /v1/models).")] = DEFAULT_MODEL,
    duration: Annotated[
        int | None, typer.Option(help="Seconds (the model's default if not given).")
    ] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help="16:9 or 9:16.")] = None,
    resolution: Annotated[str | None, typer.Option(help="720p, 1080p or 4K.")] = None,
    first_frame: Annotated[
        str | None,
        typer.Option(help="First frame: an image FILE (sent as a data URL) or an http(s) URL."),
    ] = None,
    last_frame: Annotated[
        str | None, typer.Option(help="Last frame (with --first-frame): FILE or URL.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="0 to 4294967295; random if not given.")] = None,
    samples: Annotated[int | None, typer.Option(help="Videos to generate, 1 to 4.")] = None,
    audio: Annotated[
        bool | None, typer.Option("--audio/--no-audio", help="Generate an audio track.")
    ] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to avoid.")] = None,
    resize_mode: Annotated[
        str | None, typer.Option(help="pad or crop: how input frames are fitted.")
    ] = None,
    url: Annotated[
        str,
        typer.Option(envvar="REELSERVE_URL", help="The server."),
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str | None,
        typer.Option(envvar="REELSERVE_KEY", help="An API key.", show_default=False),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the task before giving up.")
    ] = 3600.0,
) -> None:
    """Generate a video on a reelserve server and save it (-o out.mp4)."""
    from reelserve.client import APIConnectionError, APIError, Client, ReelserveError

    err = Console(stderr=True, soft_wrap=True)
    if not key:
        _fail(err, "no API key: pass --key or set REELSERVE_KEY", 2)
    images: dict[str, str] = {}
    for option, value in (("--first-frame", first_frame), ("--last-frame", last_frame)):
        if value is not None:
            images[option] = _image(err, option, value)
    params: dict[str, Any] = {
        "duration": duration,
        "aspect_ratio": aspect_ratio,
        "resolution": resolution,
        "first_frame_image": images.get("--first-frame"),
        "last_frame_image": images.get("--last-frame"),
        "seed": seed,
        "sample_count": samples,
        "generate_audio": audio,
        "negative_prompt": negative_prompt,
        "resize_mode": resize_mode,
    }
    with Client(url, key) as client:
        try:
            task_id = client.submit(model, prompt, **params)
        except APIError as exc:
            where = f" ({exc.param})" if exc.param else ""
            _fail(err, f"the server refused the request{where}: {exc.message}", 1)
        except ReelserveError as exc:
            _fail(err, f"could not submit to {url}: {exc.message}", 1)
        err.print(f"submitted [bold]{task_id}[/] ({model})")
        task = _wait(client, task_id, err, timeout)
        try:
            paths = client.download_all(task, output)
        except (APIError, APIConnectionError) as exc:
            _fail(err, f"task {task_id} completed but its video could not be downloaded: {exc}")
        except OSError as exc:
            _fail(err, f"cannot write {output}: {exc.strerror or exc}")
    for path in paths:
        print(path, flush=True)


def _image(err: Console, option: str, value: str) -> str:
    """A URL as given; a local file as a data URL (its type detected from its content)."""
    from reelserve.client import image_data_url

    if value.lower().startswith(URL_PREFIXES):
        return value
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail(err, f"{option}: cannot read {value}: {exc.strerror or exc}", 2)
    try:
        return image_data_url(data, name=f"{option} {value}")
    except ValueError as exc:
        _fail(err, str(exc), 2)


def _wait(client: Client, task_id: str, err: Console, timeout: float) -> Task:
    from reelserve.client import APIError, ReelserveError, TaskCancelled, TaskFailed, WaitTimeout

    view = _ProgressView(err)
    try:
        with view:
            task = client.wait(task_id, timeout=timeout, on_update=view.update)
    except KeyboardInterrupt:
        _cancel(client, task_id, err)
        raise typer.Exit(130) from None
    except TaskFailed as exc:
        _fail(err, f"task {task_id} failed: {exc.code}: {exc.message}")
    except TaskCancelled:
        _fail(err, f"task {task_id} was cancelled")
    except WaitTimeout:
        _fail(err, f"task {task_id} did not finish within {timeout:g} s; it goes on on the server")
    except APIError as exc:
        _fail(err, f"task {task_id}: {exc.message}")
    except ReelserveError as exc:
        _fail(err, f"lost touch with the server while waiting for {task_id}: {exc.message}")
    took = f" in {task.actual_time} s" if task.actual_time is not None else ""
    err.print(f"[green]completed[/] {task_id}{took}")
    return task


def _cancel(client: Client, task_id: str, err: Console) -> None:
    from reelserve.client import ConflictError, ReelserveError

    err.print(f"interrupted: cancelling task {task_id}...")
    try:
        task = client.cancel(task_id)
    except ConflictError:
        err.print(f"task {task_id} had already finished")
        return
    except ReelserveError as exc:
        err.print(f"[red]could not cancel task {task_id}: {exc}[/]")
        return
    state = "cancelled" if task.status == "cancelled" else "cancellation requested for"
    err.print(f"{state} task {task_id}")


def _fail(err: Console, message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _ProgressView:
    """Status, progress and ETA on standard error: a live bar on an interactive terminal, else
    one line per status change and per 10% of progress."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_interactive
        self.started: float | None = None  # when processing was first seen
        self.last_line: tuple[str, int] | None = None
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[status]:<10}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.bar_id = self.bar.add_task("", total=100, status="submitted", eta="")

    def __enter__(self) -> _ProgressView:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.live:
            self.bar.stop()

    def eta(self, task: Task) -> str:
        if task.status == "pending":
            ahead = task.queue_position
            return "queued" if ahead is None else f"queued, {ahead} ahead"
        if task.status != "processing" or self.started is None:
            return ""
        elapsed = time.monotonic() - self.started
        if task.progress > 0:
            left = elapsed * (100 - task.progress) / task.progress
        elif task.estimated_time:
            left = task.estimated_time - elapsed
        else:
            return "ETA -:--"
        return f"ETA {_clock(max(0.0, left))}"

    def update(self, task: Task) -> None:
        if task.status == "processing" and self.started is None:
            self.started = time.monotonic()
        eta = self.eta(task)
        if self.live:
            self.bar.update(self.bar_id, completed=task.progress, status=task.status, eta=eta)
            return
        step = (task.status, task.progress // 10)
        if step != self.last_line:
            self.last_line = step
            self.console.print(f"{task.status:<10} {task.progress:>3d}%  {eta}".rstrip())
