"""Image-to-video over real HTTP: first (and last) frames match the fitted source images for
both resize modes and both aspect ratios; unsafe image URLs are refused before any connection.

Image fitting does not depend on the database engine: these run on SQLite only. The seed's
scenarios 3 and 4 (eight-second clips, one in 1080p) are in the `slow` lane."""

from __future__ import annotations

import base64
import io
import itertools
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from reelserve.media.video import decode_frames
from tests.support import LiveServer, make_settings, sqlite_only, static_server, submit, wait_task

TASK_ID = re.compile(r"^task_[0-9A-HJKMNP-TV-Z]{26}$")
QUADRANTS = [(230, 40, 40), (40, 200, 60), (40, 70, 230), (240, 220, 40)]


def quadrant_image(width: int, height: int, colours: list[tuple[int, int, int]]) -> Image.Image:
    """Four flat quadrants: pad and crop place them differently, and edges are easy to reason on."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = colours[0]
    arr[: height // 2, width // 2 :] = colours[1]
    arr[height // 2 :, : width // 2] = colours[2]
    arr[height // 2 :, width // 2 :] = colours[3]
    return Image.fromarray(arr)


def expected_fit(
    src: tuple[int, int], out: tuple[int, int], mode: str, colours: list[tuple[int, int, int]]
) -> NDArray[np.uint8]:
    """The fitted picture computed from geometry alone (independent of the code under test)."""
    sw, sh = src
    ow, oh = out
    scale = min(ow / sw, oh / sh) if mode == "pad" else max(ow / sw, oh / sh)
    w, h = sw * scale, sh * scale
    x0, y0 = (ow - w) / 2, (oh - h) / 2  # where the scaled image's top-left lands
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float64) + 0.5
    u, v = (xs - x0) / w, (ys - y0) / h  # position inside the source, 0..1
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    quadrant = (v >= 0.5).astype(int) * 2 + (u >= 0.5).astype(int)
    result = np.zeros((oh, ow, 3), np.uint8)
    for q, colour in enumerate(colours):
        result[inside & (quadrant == q)] = colour
    return result


def mad(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _frames(client: httpx.Client, task: dict[str, Any], tmp: Path) -> list[NDArray[np.uint8]]:
    path = tmp / f"{task['id']}.mp4"
    path.write_bytes(client.get(task["result"]["videos"][0]["url"][0]).content)
    return list(decode_frames(path))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("images")
    quadrant_image(640, 480, QUADRANTS).save(root / "first.png")
    quadrant_image(400, 600, QUADRANTS[::-1]).save(root / "last.jpg", quality=95)
    quadrant_image(640, 480, QUADRANTS).save(root / "first.webp", lossless=True)
    with static_server(root) as base:
        yield root, base


@sqlite_only
@pytest.mark.parametrize("aspect", ["16:9", "9:16"])
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_first_and_last_frames_match_fitted_images(
    client: httpx.Client, images: tuple[Path, str], tmp_path: Path, aspect: str, mode: str
) -> None:
    _, base = images
    body = {
        "model": "sandbox",
        "prompt": "smooth transition",
        "duration": 1,
        "aspect_ratio": aspect,
        "resize_mode": mode,
        "first_frame_image": f"{base}/first.png",
        "last_frame_image": f"{base}/last.jpg",
    }
    task = wait_task(client, submit(client, body))
    assert task["status"] == "completed", task
    video = task["result"]["videos"][0]
    out = (video["width"], video["height"])
    assert out == ((1280, 720) if aspect == "16:9" else (720, 1280))
    frames = _frames(client, task, tmp_path)
    assert len(frames) == 24
    first = expected_fit((640, 480), out, mode, QUADRANTS)
    last = expected_fit((400, 600), out, mode, QUADRANTS[::-1])
    assert mad(frames[0], first) < 6
    assert mad(frames[-1], last) < 6
    # pad and crop really differ: the other mode's picture is far off
    other = expected_fit((640, 480), out, "crop" if mode == "pad" else "pad", QUADRANTS)
    assert mad(frames[0], other) > 15
    # a smooth transition: consecutive frames change a little, never jump
    steps = [mad(a, b) for a, b in itertools.pairwise(frames)]
    assert max(steps) < 25


@pytest.mark.slow
@sqlite_only
def test_seed_scenarios_3_and_4_match_their_images(
    client: httpx.Client, images: tuple[Path, str], tmp_path: Path
) -> None:
    _, base = images
    scenario_3 = {
        "model": "veo3.1-fast-official",
        "prompt": "the cat slowly walks forward and looks around",
        "first_frame_image": f"{base}/first.webp",
        "duration": 8,
        "resolution": "720p",
    }
    scenario_4 = {
        "model": "veo3.1-quality-official",
        "prompt": "smooth cinematic transition from the first frame to the last frame",
        "first_frame_image": f"{base}/first.png",
        "last_frame_image": f"{base}/last.jpg",
        "duration": 8,
        "resolution": "1080p",
    }
    ids = [submit(client, scenario_3), submit(client, scenario_4)]
    assert all(TASK_ID.match(task_id) for task_id in ids)
    t3, t4 = (wait_task(client, task_id, timeout=300) for task_id in ids)
    assert t3["status"] == "completed" and t4["status"] == "completed", (t3, t4)
    f3 = _frames(client, t3, tmp_path)
    assert len(f3) == 192
    assert mad(f3[0], expected_fit((640, 480), (1280, 720), "pad", QUADRANTS)) < 6
    f4 = _frames(client, t4, tmp_path)
    assert len(f4) == 192 and f4[0].shape == (1080, 1920, 3)
    assert mad(f4[0], expected_fit((640, 480), (1920, 1080), "pad", QUADRANTS)) < 6
    assert mad(f4[-1], expected_fit((400, 600), (1920, 1080), "pad", QUADRANTS[::-1])) < 6


@sqlite_only
def test_data_url_input(client: httpx.Client, tmp_path: Path) -> None:
    buf = io.BytesIO()
    quadrant_image(320, 240, QUADRANTS).save(buf, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": "sandbox", "prompt": "p", "duration": 1, "first_frame_image": data_url}
    task = wait_task(client, submit(client, body))
    assert task["status"] == "completed", task
    frames = _frames(client, task, tmp_path)
    assert mad(frames[0], expected_fit((320, 240), (1280, 720), "pad", QUADRANTS)) < 6


@sqlite_only
def test_unreachable_or_invalid_image_fails_the_task(
    client: httpx.Client, images: tuple[Path, str]
) -> None:
    root, base = images
    (root / "not-an-image.png").write_bytes(b"<html>hello</html>")
    for url, phrase in [
        (f"{base}/missing.png", "404"),
        (f"{base}/not-an-image.png", "image"),
    ]:
        body = {"model": "sandbox", "prompt": "p", "duration": 1, "first_frame_image": url}
        task = wait_task(client, submit(client, body))
        assert task["status"] == "failed", task
        assert task["error"]["code"] == "invalid_image"
        assert phrase in task["error"]["message"]


class Canary:
    """A loopback HTTP server that must never be asked for anything."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_ssrf_refused_at_submit(tmp_path: Path) -> None:
    canary = Canary()
    # The default policy (no allowances). Test names resolve, by setting, to forbidden addresses;
    # nothing is ever sent to them: refusal happens at the address check.
    overrides = {
        "meta.test": "169.254.169.254",
        "private10.test": "10.1.2.3",
        "private172.test": "172.16.0.9",
        "private192.test": "192.168.1.1",
        "loop.test": "127.0.0.1",
    }
    settings = make_settings(
        tmp_path / "data", image_allow_networks=[], image_resolve_overrides=overrides
    )
    live = LiveServer(settings, run_worker=False).start()
    p = canary.port
    urls = [
        f"http://127.0.0.1:{p}/a.png",
        f"http://localhost:{p}/a.png",
        f"http://[::1]:{p}/a.png",
        f"http://0.0.0.0:{p}/a.png",
        f"http://2130706433:{p}/a.png",
        f"http://0177.0.0.1:{p}/a.png",
        f"http://0x7f000001:{p}/a.png",
        f"http://[::ffff:127.0.0.1]:{p}/a.png",
        f"http://loop.test:{p}/a.png",
        "http://meta.test/latest/meta-data/",
        "http://private10.test/a.png",
        "http://private172.test/a.png",
        "http://private192.test/a.png",
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/a.png",
    ]
    try:
        key = live.mint("test")
        with live.client(key) as c:
            for url in urls:
                for field in ("first_frame_image", "last_frame_image"):
                    body = {"model": "sandbox", "prompt": "p", "duration": 1}
                    body["first_frame_image"] = url
                    if field == "last_frame_image":
                        body["first_frame_image"] = (
                            "data:image/png;base64," + base64.b64encode(_tiny_png()).decode()
                        )
                        body["last_frame_image"] = url
                    response = c.post("/v1/videos/generations", json=body)
                    assert response.status_code == 400, (url, response.text)
                    assert response.json()["error"]["param"] == field, url
            assert c.get("/v1/tasks").json()["data"] == []
    finally:
        live.stop()
        canary.close()
    assert canary.hits == []


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()
