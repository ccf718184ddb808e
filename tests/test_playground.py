"""The web playground at `/`, end to end in a real browser.

The page is served by the real app under uvicorn on loopback (`LiveServer`) and driven in headless
Chromium: Debian's `chromium` package, controlled by Playwright's Python package over the DevTools
protocol (no browser is downloaded; `executable_path` points at the system binary). The browser
pastes a key, fills the form, uploads a first frame from a file, submits, follows the task to the
end, and plays the H.264 result in a `<video>` element; the test reads back what the browser
decoded (size, duration, pixels of the first frame) rather than trusting the page's own words.

Chromium missing: the browser tests skip with the reason on a developer's machine and fail in CI
(`CI=true`), whose `.ci/run` installs it.

`REELSERVE_PLAYGROUND_SCREENSHOT=docs/playground.png pytest tests/test_playground.py` also writes
the screenshot of the finished page shown in docs/playground.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from reelserve.api.routes.playground import content_security_policy
from reelserve.cli.keys import mint_key_with_webhook_secret
from tests.support import LiveServer, make_settings, submit, wait_task

CHROMIUM = os.environ.get("REELSERVE_TEST_CHROMIUM", "/usr/bin/chromium")
# Keep Chromium off the network: it only ever talks to the server on 127.0.0.1.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_ENV = "REELSERVE_PLAYGROUND_SCREENSHOT"
H264 = 'video/mp4; codecs="avc1.640028"'
ORANGE = (240, 130, 20)
BLUE = (30, 70, 220)
VEO_AND_SANDBOX = ["sandbox", "veo3.1-fast-official"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (
            f"no Chromium at {CHROMIUM} (apt-get install chromium; or set "
            "REELSERVE_TEST_CHROMIUM to a Chromium binary)"
        )
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium with a fresh profile (user data dir) for this module."""
    missing = _browser_missing()
    if missing is not None:
        if _in_ci():
            pytest.fail(f"{missing} (CI=true: the playground tests need Chromium)")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="reelserve-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 1000},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("playground") / "data")).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server without a worker: its tasks stay pending, so they can be listed and cancelled."""
    data = tmp_path_factory.mktemp("playground-idle") / "data"
    live = LiveServer(make_settings(data), run_worker=False).start()
    yield live
    live.stop()


class PageProblems:
    """Console errors (CSP violations among them) and uncaught exceptions. Chromium also logs
    every 4xx answer as an error; those the test provokes on purpose are passed as `expected`."""

    def __init__(self, page: Any, expected: tuple[int, ...] = ()) -> None:
        self.errors: list[str] = []
        self.expected = tuple(
            f"Failed to load resource: the server responded with a status of {status} "
            for status in expected
        )
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith(self.expected):
            self.errors.append(message.text)


def _new_page(browser: Any, width: int = 1280, height: int = 1000) -> Any:
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": height})
    page.set_default_timeout(30_000)
    return page


def _first_frame_png(path: Path) -> Path:
    """A 640x360 (16:9) picture: orange left half, blue right half, a white bar in the middle."""
    image = Image.new("RGB", (640, 360), ORANGE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((320, 0, 639, 359), fill=BLUE)
    draw.rectangle((300, 150, 340, 210), fill=(255, 255, 255))
    image.save(path)
    return path


def _mint(server: LiveServer, name: str) -> str:
    """A test key. Minting runs its own event loop, which cannot start on this thread while
    Playwright's synchronous API drives its loop here, so it runs on another thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(server.mint, "test", name).result()


def _wait(page: Any, expression: str, timeout: float = 30_000) -> None:
    """Wait until a JavaScript expression is true in the page. Given as a function: a bare
    expression string would be evaluated with eval(), which the page's CSP rightly refuses."""
    page.wait_for_function(f"() => ({expression})", timeout=timeout)


def _use_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#use-key")


def _options(page: Any, select: str) -> list[str]:
    values: list[str] = page.eval_on_selector_all(
        f"{select} option:not([disabled])", "els => els.map(e => e.value)"
    )
    return values


# -- the page as HTTP ----------------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_strict_policy(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"  # no inline script, no eval
        assert directives["connect-src"] == "'self'"
        for needed in ("'self'", "blob:", "data:"):
            assert needed in directives["media-src"].split()
            assert needed in directives["img-src"].split()
        assert page.headers["x-content-type-options"] == "nosniff"
        body = page.text
        assert 'src="playground/app.js"' in body and 'href="playground/app.css"' in body
        assert "http://" not in body and "https://" not in body.replace('"https://…"', "")

        for name, media_type in (("app.js", "text/javascript"), ("app.css", "text/css")):
            asset = http.get(f"/playground/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(media_type)
            again = http.get(
                f"/playground/{name}", headers={"If-None-Match": asset.headers["etag"]}
            )
            assert again.status_code == 304
        assert http.head("/").status_code == 200

        missing = http.get("/playground/nothing.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert "/" not in http.get("/openapi.json").json()["paths"]


def test_policy_allows_file_links_moved_elsewhere(tmp_path: Path) -> None:
    """With file links on another origin (public_url, presigned S3), media may come from there."""
    base = make_settings(tmp_path / "a")
    assert "example" not in content_security_policy(base)
    moved = make_settings(
        tmp_path / "b",
        public_url="https://media.example.com/base/",
        storage="s3",
        s3_bucket="videos",
        s3_presign=True,
        s3_endpoint_url="http://127.0.0.1:9000",
    )
    directives = dict(d.strip().split(" ", 1) for d in content_security_policy(moved).split(";"))
    for name in ("media-src", "img-src"):
        sources = directives[name].split()
        assert "https://media.example.com" in sources
        assert "http://127.0.0.1:9000" in sources and "http://*.127.0.0.1:9000" in sources
    assert directives["connect-src"] == "'self'"  # API calls stay on the page's origin
    on_aws = make_settings(tmp_path / "c", storage="s3", s3_bucket="videos", s3_presign=True)
    assert "https://*.amazonaws.com" in content_security_policy(on_aws)


# -- the whole flow in Chromium ----------------------------------------------------------------


@pytest.mark.slow
def test_generate_with_a_first_frame_and_play_the_result(
    browser: Any, server: LiveServer, tmp_path: Path
) -> None:
    key = _mint(server, "playground")
    png = _first_frame_png(tmp_path / "first.png")
    with server.client(key) as api:  # an earlier task, made without the page
        earlier = submit(
            api, {"model": "sandbox", "prompt": "a teal lantern at dusk", "duration": 1}
        )
        wait_task(api, earlier)
    page = _new_page(browser)
    problems = PageProblems(page, expected=(400, 401))
    event_streams: list[int] = []
    page.on(
        "response",
        lambda r: event_streams.append(r.status) if r.url.endswith("/events") else None,
    )
    try:
        page.goto(server.url + "/")
        assert page.is_disabled("#model")  # nothing to choose before a key

        # The two image fields, built from one template, each with its own label, ids and
        # accessible descriptions; the template itself is gone from the page.
        assert page.locator("template").count() == 0
        for name, label, frame in (
            ("first_frame_image", "First frame (PNG, JPEG or WebP file)", "first"),
            ("last_frame_image", "Last frame (optional, needs a first frame)", "last"),
        ):
            file_input = page.get_by_label(label, exact=True)
            assert file_input.get_attribute("id") == name
            assert file_input.get_attribute("name") == name
            assert file_input.get_attribute("type") == "file"
            described = file_input.get_attribute("aria-describedby")
            assert described == f"{name}-hint {name}-error"
            assert page.locator(f"#{name}-hint.hint").count() == 1
            assert page.is_hidden(f"#{name}-error")
            url_input = page.locator(f"[data-image={name}]").get_by_label(
                "or an image URL the server fetches", exact=True
            )
            assert url_input.get_attribute("id") == f"{name}_url"
            assert url_input.get_attribute("aria-describedby") == f"{name}-error"
            field = page.locator(f"[data-image={name}]")
            assert field.locator(".preview img").get_attribute("alt") == (
                f"Preview of the {frame} frame"
            )
            assert field.locator(".remove-image").text_content() == f"Remove {frame} frame"

        # A wrong key: the 401's message shows next to the key field.
        _use_key(page, "rs_test_not-a-real-key")
        page.wait_for_selector("#api-key-error:not([hidden])")
        assert "invalid or revoked" in page.inner_text("#api-key-error")
        assert page.get_attribute("#api-key", "aria-invalid") == "true"

        _use_key(page, key)
        page.wait_for_selector("#model:not([disabled])")
        assert page.is_hidden("#api-key-error")
        assert page.evaluate("localStorage.getItem('reelserve.playground.apiKey')") == key

        # The model's capabilities constrain the choices.
        page.select_option("#model", "veo3.1-fast-official")
        assert _options(page, "#duration") == ["4", "6", "8"]
        page.select_option("#resolution", "1080p")
        assert _options(page, "#duration") == ["8"]  # Veo 3.1: 1080p needs 8 seconds
        assert page.input_value("#duration") == "8"
        page.select_option("#model", "sandbox")
        assert _options(page, "#duration") == [str(d) for d in range(1, 21)]
        assert _options(page, "#aspect_ratio") == ["16:9", "9:16"]
        assert _options(page, "#sample_count") == ["1", "2", "3", "4"]
        assert page.is_disabled("#last_frame_image")  # no first frame yet
        assert page.is_disabled("#resize_mode")

        # A request the server refuses: the envelope's message appears next to `param`'s field.
        page.fill("#prompt", "an orange and blue paper boat drifting across a calm lake")
        page.select_option("#duration", "2")
        page.select_option("#resolution", "720p")
        page.select_option("#aspect_ratio", "16:9")
        page.fill("#seed", "99999999999")
        page.click("#submit")
        page.wait_for_selector("#seed-error:not([hidden])")
        assert "seed must be between 0 and 4294967295" in page.inner_text("#seed-error")
        assert page.get_attribute("#seed", "aria-invalid") == "true"
        assert page.is_hidden("#prompt-error")
        with server.client(key) as api:
            listed = [t["id"] for t in api.get("/v1/tasks").json()["data"]]
        assert listed == [earlier]  # nothing was queued

        page.fill("#seed", "42")
        assert page.is_hidden("#seed-error")  # editing the field clears its error

        # The first frame comes from a file, read in the browser into a data: URL.
        page.set_input_files("#first_frame_image", str(png))
        _wait(
            page,
            "document.querySelector('[data-image=first_frame_image] img').naturalWidth === 640",
        )
        preview = page.get_attribute("[data-image=first_frame_image] img", "src")
        assert preview is not None and preview.startswith("data:image/png;base64,")
        assert "image-to-video" in page.inner_text("#mode-label")
        assert page.is_enabled("#last_frame_image") and page.is_enabled("#resize_mode")

        page.click("#submit")
        page.wait_for_selector("#task-view:not([hidden])")
        task_id = page.inner_text("#task-id").strip()
        assert task_id.startswith("task_")

        # Progress as the page shows it: never decreasing, ending at 100 with "completed".
        seen: list[int] = []
        deadline = time.monotonic() + 120
        while True:
            status = page.inner_text("#task-status")
            seen.append(int(page.eval_on_selector("#task-progress", "e => e.value")))
            if status in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"task still {status} in the page"
            time.sleep(0.1)
        assert status == "completed", page.inner_text("#task-error")
        assert seen == sorted(seen) and seen[-1] == 100
        assert "took" in page.inner_text("#task-progress-text")
        assert page.is_hidden("#cancel-task")

        with server.client(key) as api:
            task = api.get(f"/v1/tasks/{task_id}").json()["data"]
        (video,) = task["result"]["videos"]
        assert (video["width"], video["height"], video["duration"], video["seed"]) == (
            1280,
            720,
            2,
            42,
        )
        with server.client(key) as api:  # does this server have the event stream route?
            probe = api.get("/v1/tasks/task_none/events").json()["error"]["message"]
        if not probe.startswith("no route"):
            assert event_streams and event_streams[0] == 200  # followed on the event stream

        # The result plays in the <video> element: what Chromium decoded, read back.
        player = "#task-result video"
        assert page.get_attribute(player, "src") == video["url"][0]
        can_play = page.eval_on_selector(player, f"v => v.canPlayType({H264!r})")
        if can_play:
            _wait(page, f"document.querySelector({player!r}).readyState >= 2", timeout=30_000)
            facts = page.eval_on_selector(
                player,
                "v => ({w: v.videoWidth, h: v.videoHeight, d: v.duration, e: v.error})",
            )
            assert (facts["w"], facts["h"]) == (1280, 720)
            assert abs(facts["d"] - 2.0) < 0.15 and facts["e"] is None
            # The first decoded frame is the uploaded picture (pad mode, same aspect ratio).
            left, right = page.eval_on_selector(player, FIRST_FRAME_COLOURS)
            assert _close(left, ORANGE) and _close(right, BLUE), (left, right)
            # And it plays: time advances.
            page.eval_on_selector(player, "v => { v.muted = true; return v.play(); }")
            _wait(page, f"document.querySelector({player!r}).currentTime > 0.5")
            page.eval_on_selector(
                player,
                "v => { v.pause(); v.currentTime = 1.0;"
                " return new Promise(r => v.addEventListener('seeked', r, {once: true})); }",
            )
        else:  # a Chromium built without H.264: check what is true, and say so at the end
            _wait(page, f"document.querySelector({player!r}).error !== null")
            assert page.eval_on_selector(player, "v => v.error.code") == 4  # SRC_NOT_SUPPORTED

        download = page.get_attribute("#task-result a[download]", "href")
        assert download == video["url"][0]
        with httpx.Client() as http:
            part = http.get(download, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content[4:8] == b"ftyp"

        # The task list shows the task with its thumbnail, loaded by the browser.
        card = f'[data-task-id="{task_id}"]'
        _wait(
            page,
            f"(() => {{ const i = document.querySelector('{card} img');"
            " return i && i.complete && i.naturalWidth > 0; })()",
        )
        width, height = page.eval_on_selector(
            f"{card} img", "i => [i.naturalWidth, i.naturalHeight]"
        )
        assert abs(width / height - 16 / 9) < 0.02
        assert page.get_attribute(f"{card} img", "src") == video["thumbnail_url"]
        shown = page.eval_on_selector_all(
            "#task-list .task-card", "els => els.map(e => e.dataset.taskId)"
        )
        assert shown == [task_id, earlier]  # newest first

        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        assert Image.open(shot).size[0] == 1280
        target = os.environ.get(SCREENSHOT_ENV)
        if target:
            shutil.copyfile(shot, target)

        assert problems.errors == []
        if not can_play:
            reason = (
                f"this Chromium ({CHROMIUM}) cannot decode H.264: canPlayType({H264!r}) is '' "
                "and the <video> reports MEDIA_ERR_SRC_NOT_SUPPORTED; everything but playback "
                "was checked"
            )
            if _in_ci():
                pytest.fail(reason)
            pytest.skip(reason)
    finally:
        page.close()


# The colours at the centre of the left and right halves of the video's first frame.
FIRST_FRAME_COLOURS = """async v => {
  v.pause();
  if (v.currentTime !== 0) {
    const seeked = new Promise(r => v.addEventListener('seeked', r, {once: true}));
    v.currentTime = 0;
    await seeked;
  }
  const canvas = document.createElement('canvas');
  canvas.width = v.videoWidth; canvas.height = v.videoHeight;
  const g = canvas.getContext('2d');
  g.drawImage(v, 0, 0);
  const at = (x, y) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3));
  return [at(canvas.width / 4, canvas.height / 2), at(canvas.width * 3 / 4, canvas.height / 2)];
}"""


def _close(got: list[int], want: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(g - w) <= tolerance for g, w in zip(got, want, strict=True))


def test_task_list_paging_cancel_forget_and_narrow_screen(
    browser: Any, idle_server: LiveServer
) -> None:
    """Polling (the event stream answered as a server without it would), paging, cancel, the
    key kept and forgotten, and a phone-sized screen."""
    key = _mint(idle_server, "playground-idle")
    with idle_server.client(key) as api:
        ids = [
            submit(api, {"model": "sandbox", "prompt": f"clip {n}", "duration": 1})
            for n in range(14)
        ]
    page = _new_page(browser, 390, 844)
    problems = PageProblems(page, expected=(404,))
    polls: list[str] = []
    page.on(
        "request",
        lambda r: polls.append(r.url) if r.url.endswith(f"/v1/tasks/{ids[3]}") else None,
    )
    no_events = (
        '{"code":404,"error":{"message":"no route","type":"invalid_request_error","param":null}}'
    )
    page.route(
        "**/v1/tasks/*/events",
        lambda route: route.fulfill(status=404, content_type="application/json", body=no_events),
    )
    try:
        page.goto(idle_server.url + "/")
        _use_key(page, key)
        page.wait_for_selector("#model:not([disabled])")

        # Newest first, a page at a time.
        _wait(page, "document.querySelectorAll('#task-list .task-card').length === 12")
        assert page.is_visible("#load-more")
        page.click("#load-more")
        _wait(page, "document.querySelectorAll('#task-list .task-card').length === 14")
        assert page.is_hidden("#load-more")
        shown = page.eval_on_selector_all(
            "#task-list .task-card", "els => els.map(e => e.dataset.taskId)"
        )
        assert shown == list(reversed(ids))

        # Open a pending task from the list, then cancel it from the page.
        page.click(f'[data-task-id="{ids[3]}"]')
        _wait(page, f"document.querySelector('#task-id').textContent === '{ids[3]}'")
        page.wait_for_selector("#task-status.pending")
        assert "in the queue" in page.inner_text("#task-progress-text")
        deadline = time.monotonic() + 30
        while len(polls) < 3:  # the opening read, then polls while the task stays pending
            assert time.monotonic() < deadline, polls
            page.wait_for_timeout(100)
        page.click("#cancel-task")
        page.wait_for_selector("#task-status.cancelled")
        page.wait_for_selector(f'[data-task-id="{ids[3]}"] >> text=cancelled')
        with idle_server.client(key) as api:
            assert api.get(f"/v1/tasks/{ids[3]}").json()["data"]["status"] == "cancelled"

        # A phone-sized screen: nothing wider than the viewport, every control labelled.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        unlabelled = page.evaluate(
            """[...document.querySelectorAll('input, select, textarea, button')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.textContent.trim())
              .map(e => e.id || e.outerHTML.slice(0, 60))"""
        )
        assert unlabelled == []

        # The key is remembered by this browser across page loads, until forgotten.
        page.reload()
        page.wait_for_selector("#model:not([disabled])")
        assert page.input_value("#api-key") == key
        page.click("#forget-key")
        assert page.evaluate("localStorage.getItem('reelserve.playground.apiKey')") is None
        assert page.input_value("#api-key") == ""
        assert page.is_disabled("#model")
        assert page.eval_on_selector_all("#task-list li", "els => els.length") == 0
        page.reload()
        assert page.input_value("#api-key") == ""
        assert page.is_disabled("#model")

        assert problems.errors == []
    finally:
        page.close()


def _mint_limited(server: LiveServer, changes: dict[str, Any]) -> str:
    """A test key with limits, minted on another thread (as `_mint`)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        minted = pool.submit(
            asyncio.run,
            mint_key_with_webhook_secret(server.settings, "test", "limited", changes=changes),
        )
        return minted.result()[0]


def test_balance_limits_and_the_402_and_429_as_messages(
    browser: Any, idle_server: LiveServer
) -> None:
    """A key with a small budget and a rate of one submit a minute: the page shows its balance
    and limits (GET /v1/usage), a submit above the budget shows the 402's message, and one over
    the rate the 429's message with its Retry-After seconds."""
    key = _mint_limited(
        idle_server,
        {"max_running": 2, "rate_per_minute": 1, "budget": 0.5, "models": VEO_AND_SANDBOX},
    )
    veo = {"model": "veo3.1-fast-official", "prompt": "a red kite", "duration": 8}
    with idle_server.client(key) as api:
        estimate = api.post("/v1/videos/estimates", json=veo).json()["data"]
    assert estimate["estimated_cost"] > 0.5 and estimate["affordable"] is False
    page = _new_page(browser)
    problems = PageProblems(page, expected=(402, 429))
    try:
        page.goto(idle_server.url + "/")
        assert page.is_hidden("#account")  # nothing to show before a key
        _use_key(page, key)
        page.wait_for_selector("#account:not([hidden])")
        balance = page.get_by_label("Balance", exact=True)
        limits = page.get_by_label("Limits", exact=True)
        assert balance.inner_text() == (
            "0.5 USD left of 0.5 USD (reserved 0 USD, spent 0 USD)"
            " · test key: list prices, no money"
        )
        assert limits.inner_text() == (
            "2 running at once · 1 submit per minute · budget 0.5"
            " · models: sandbox, veo3.1-fast-official"
        )

        # Above the budget: the 402's message, and nothing reserved.
        page.select_option("#model", "veo3.1-fast-official")
        page.select_option("#resolution", "720p")
        page.select_option("#duration", "8")
        page.fill("#prompt", veo["prompt"])
        page.click("#submit")
        page.wait_for_selector("#form-error[data-status='402']:not([hidden])")
        shown = page.inner_text("#form-error")
        cost = f"{estimate['estimated_cost']:g} USD"
        assert shown.startswith("Not enough balance: this request's estimated cost is "), shown
        assert cost in shown and "left: 0.5 USD (budget 0.5 USD" in shown, shown
        assert page.get_attribute("#form-error", "role") == "alert"
        assert page.is_hidden("#task-view")
        assert balance.inner_text().startswith("0.5 USD left of 0.5 USD")

        # The one submit of this minute, made by another client; the page's next is over it.
        with idle_server.client(key) as api:
            submit(api, {"model": "sandbox", "prompt": "the minute's one", "duration": 1})
        page.select_option("#model", "sandbox")
        page.select_option("#duration", "1")
        page.click("#submit")
        page.wait_for_selector("#form-error[data-status='429']:not([hidden])")
        shown = page.inner_text("#form-error")
        assert shown.startswith(
            "Too many submits: this API key may submit 1 task per minute and has reached that"
        ), shown
        seconds = int(shown.rsplit("Try again in ", 1)[1].split(" ")[0])
        assert 1 <= seconds <= 60 and shown.endswith(
            f"Try again in {seconds} second{'s' if seconds != 1 else ''}."
        ), shown
        with idle_server.client(key) as api:
            tasks = api.get("/v1/tasks").json()["data"]
            usage = api.get("/v1/usage").json()["data"]
        assert [t["model"] for t in tasks] == ["sandbox"]  # the refused two queued nothing
        assert usage["balance"]["left"] == 0.5  # the 402 reserved nothing; sandbox costs 0

        # Forgetting the key hides its account.
        page.click("#forget-key")
        assert page.is_hidden("#account")
        assert problems.errors == []
    finally:
        page.close()
