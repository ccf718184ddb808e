"""Retention: after `result_ttl` links answer 410, the sweeper deletes the files (inputs too)
and the task says its result expired."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

from PIL import Image

from tests.support import LiveServer, make_settings, submit, wait_task


def test_results_and_inputs_expire(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", result_ttl=3, sweep_interval=0.3)
    live = LiveServer(settings).start()
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    try:
        key = live.mint("test")
        with live.client(key) as c:
            body = {"model": "sandbox", "prompt": "p", "duration": 1, "first_frame_image": image}
            task = wait_task(c, submit(c, body))
            assert task["status"] == "completed", task
            media = settings.resolved_media_dir / task["id"]
            assert (media / "0.mp4").is_file() and (media / "inputs").is_dir()
            url = task["result"]["videos"][0]["url"][0]
            assert c.get(url).status_code == 200
            assert "expired" not in task["result"]

            deadline = time.monotonic() + 30
            while media.exists():
                assert time.monotonic() < deadline, "sweeper did not delete the files"
                time.sleep(0.2)
            gone = c.get(url)
            assert gone.status_code == 410
            assert gone.json()["code"] == 410
            # the sweeper marks the task right after deleting its files
            while "expired" not in c.get(f"/v1/tasks/{task['id']}").json()["data"]["result"]:
                assert time.monotonic() < deadline, "task not marked expired"
                time.sleep(0.1)
            listed = c.get("/v1/tasks").json()["data"][0]
            assert listed["result"]["expired"] is True
    finally:
        live.stop()
