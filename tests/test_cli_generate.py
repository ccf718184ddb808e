"""`reelserve generate`, run as a real subprocess against a live server with a test key: the
progress display and status it prints, the saved MP4 (probed), samples, a local first frame sent
as a data URL, failures with a non-zero exit, and Ctrl-C cancelling the task."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from reelserve.media.video import decode_frames, probe_video
from tests.support import LiveServer, make_settings, static_server


def run_generate(
    server: LiveServer, key: str | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("REELSERVE_", "TTY_"))}
    full.update({"REELSERVE_URL": server.url, "COLUMNS": "120"})
    if key is not None:
        full["REELSERVE_KEY"] = key
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "reelserve", "generate", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=full,
        check=False,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(make_settings(tmp_path_factory.mktemp("cli-gen") / "data")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(live: LiveServer) -> str:
    return live.mint("test", "cli")


@pytest.mark.slow
def test_generate_saves_the_video_and_shows_progress(
    live: LiveServer, key: str, tmp_path: Path
) -> None:
    out = tmp_path / "clips" / "boat.mp4"
    done = run_generate(
        live, key,
        "a paper boat on a pond", "--model", "sandbox", "--duration", "2",
        "--aspect-ratio", "9:16", "--resolution", "720p", "--seed", "5", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(out)]  # only the saved path on stdout
    err = done.stderr
    assert "submitted task_" in err
    # Not a terminal: one line per status change and per 10% of progress, with an ETA.
    lines = err.splitlines()
    statuses = [line.split()[0] for line in lines if line.split()[:1] and "%" in line]
    assert statuses[-1] == "completed" and "processing" in statuses, err
    assert any(line.startswith("processing") and "ETA" in line for line in lines), err
    assert "completed task_" in err
    info = probe_video(out)
    assert (info.width, info.height) == (720, 1280)
    assert info.duration == pytest.approx(2.0, abs=0.05)


def test_generate_on_a_terminal_draws_a_progress_bar(
    live: LiveServer, key: str, tmp_path: Path
) -> None:
    out = tmp_path / "bar.mp4"
    done = run_generate(
        live, key, "a lighthouse", "--model", "sandbox", "--duration", "1", "-o", str(out),
        env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\x1b[" in done.stderr  # drawn with terminal control sequences
    assert "━" in done.stderr and "100%" in done.stderr and "completed" in done.stderr
    assert done.stdout.strip() == str(out)
    assert probe_video(out).duration == pytest.approx(1.0, abs=0.05)


def test_generate_several_samples(live: LiveServer, key: str, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    done = run_generate(
        live, key, "two kites", "--model", "sandbox", "--duration", "1", "--samples", "2",
        "--audio", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    paths = [Path(p) for p in done.stdout.splitlines()]
    assert paths == [out, tmp_path / "out-1.mp4"]
    assert paths[0].read_bytes() != paths[1].read_bytes()
    for path in paths:
        info = probe_video(path)
        assert info.has_audio and info.duration == pytest.approx(1.0, abs=0.05)


def test_local_first_frame_is_sent_as_a_data_url(
    live: LiveServer, key: str, tmp_path: Path
) -> None:
    picture = tmp_path / "frame"  # no extension: the type comes from the content
    Image.new("RGB", (320, 180), (20, 40, 230)).save(picture, "PNG")
    out = tmp_path / "i2v.mp4"
    done = run_generate(
        live, key, "blue hour", "--model", "sandbox", "--duration", "1",
        "--first-frame", str(picture), "--resize-mode", "crop", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = next(decode_frames(out))
    red, green, blue = (int(c) for c in first[first.shape[0] // 2, first.shape[1] // 2])
    assert blue > 180 and red < 60 and green < 80, (red, green, blue)
    task_id = done.stderr.split("submitted ", 1)[1].split()[0]
    db = live.settings.data_dir / "reelserve.db"
    with sqlite3.connect(db) as conn:
        (spec,) = conn.execute("SELECT spec FROM tasks WHERE id = ?", (task_id,)).fetchone()
    sent = json.loads(spec)
    assert sent["first_frame_image"].startswith("data:image/png;base64,")
    assert sent["resize_mode"] == "crop"


@pytest.mark.slow
def test_failures_exit_non_zero(live: LiveServer, key: str, tmp_path: Path) -> None:
    refused = run_generate(live, key, "x", "--model", "sandbox", "--duration", "99")
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "duration" in refused.stderr
    assert refused.stdout == ""

    with static_server(tmp_path) as images:
        failed = run_generate(
            live, key, "x", "--model", "sandbox", "--duration", "1",
            "--first-frame", f"{images}/missing.png", "-o", str(tmp_path / "never.mp4"),
        )  # fmt: skip
    assert failed.returncode == 1
    assert "failed: invalid_image" in failed.stderr
    assert not (tmp_path / "never.mp4").exists()

    missing = run_generate(live, key, "x", "--first-frame", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "--first-frame" in missing.stderr
    (tmp_path / "notes.txt").write_text("not a picture")
    not_image = run_generate(live, key, "x", "--first-frame", str(tmp_path / "notes.txt"))
    assert not_image.returncode == 2 and "JPEG, PNG or WebP" in not_image.stderr

    no_key = run_generate(live, None, "x")
    assert no_key.returncode == 2 and "REELSERVE_KEY" in no_key.stderr
    wrong_key = run_generate(live, "rs_test_wrong", "x", "--model", "sandbox")
    assert wrong_key.returncode == 1 and "invalid or revoked API key" in wrong_key.stderr


def test_ctrl_c_cancels_the_task(tmp_path: Path) -> None:
    idle = LiveServer(make_settings(tmp_path / "data"), run_worker=False).start()
    try:
        key = idle.mint()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REELSERVE_", "TTY_"))}
        env.update({"REELSERVE_URL": idle.url, "REELSERVE_KEY": key})
        proc = subprocess.Popen(
            [sys.executable, "-m", "reelserve", "generate", "waiting", "--model", "sandbox",
             "--duration", "1", "-o", str(tmp_path / "x.mp4")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        lines: list[str] = []
        while not any(line.startswith("pending") for line in lines):
            line = proc.stderr.readline()
            assert line, f"generate exited early: {''.join(lines)}"
            lines.append(line)
        task_id = next(line for line in lines if "submitted" in line).split()[1]
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
        err = "".join(lines) + rest
        assert proc.returncode == 130, err
        assert f"cancelled task {task_id}" in err
        with idle.client(key) as client:
            deadline = time.monotonic() + 10
            view = client.get(f"/v1/tasks/{task_id}").json()["data"]
            while view["status"] != "cancelled" and time.monotonic() < deadline:
                time.sleep(0.1)
                view = client.get(f"/v1/tasks/{task_id}").json()["data"]
        assert view["status"] == "cancelled"
        assert out == ""
    finally:
        idle.stop()


def test_generate_help_lists_the_options() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "reelserve", "generate", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert shown.returncode == 0
    for option in ("--model", "--duration", "--aspect-ratio", "--resolution", "--first-frame",
                   "--last-frame", "--seed", "--samples", "--audio", "--negative-prompt",
                   "--resize-mode", "--output", "--url", "--key"):  # fmt: skip
        assert option in shown.stdout, option
