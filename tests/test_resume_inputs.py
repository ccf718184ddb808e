"""A resumed image-to-video task uses the input it fetched the first time.

Worker 1 fetches the first frame, starts rendering and is killed; the image at the URL then
changes. Worker 2 resumes the task from the stored copy: the image host sees one request, and
the video starts on the original picture, not the new one.
"""

from __future__ import annotations

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reelserve.media.video import decode_frames
from tests.support import LiveServer, make_settings, start_worker, submit, wait_progress, wait_task


def _png(colour: tuple[int, int, int]) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (320, 180), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_resumed_task_does_not_refetch_its_image(tmp_path: Path) -> None:
    served = {"body": _png((230, 30, 30))}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = served["body"]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    data_dir = tmp_path / "data"
    live = LiveServer(make_settings(data_dir), run_worker=False).start()
    first = second = None
    try:
        key = live.mint("test")
        with live.client(key) as c:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/frame.png"
            body = {"model": "sandbox", "prompt": "p", "duration": 4, "first_frame_image": url}
            task_id = submit(c, body)
            first = start_worker(data_dir, tmp_path / "w1.log")
            wait_progress(c, task_id, 5)  # it fetched the image and is rendering
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            served["body"] = _png((30, 30, 230))  # the URL now shows another picture

            second = start_worker(data_dir, tmp_path / "w2.log")
            task = wait_task(c, task_id, timeout=180)
            assert task["status"] == "completed", task
            video = tmp_path / "out.mp4"
            video.write_bytes(c.get(task["result"]["videos"][0]["url"][0]).content)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        live.stop()
        httpd.shutdown()
        httpd.server_close()
    assert requests == ["/frame.png"]
    frame0 = next(decode_frames(video)).astype(np.int16)
    centre = frame0[300:420, 580:700].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 180 and centre[2] < 80, centre  # still the original red picture
