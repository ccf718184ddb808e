"""S3-compatible storage against a real S3 server on loopback (moto's server mode).

Results and fetched inputs go to the bucket; file links stream from it with Range support, or
redirect to presigned URLs; retention deletes the objects.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from reelserve.storage.s3 import S3Storage
from tests.support import LiveServer, make_settings, submit, wait_task

BUCKET = "reelserve-results"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    _client(endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def _s3_settings(data_dir: Path, endpoint: str, prefix: str, **extra: Any) -> Any:
    return make_settings(
        data_dir,
        storage="s3",
        s3_bucket=BUCKET,
        s3_prefix=prefix,
        s3_endpoint_url=endpoint,
        s3_region="us-east-1",
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_addressing_style="path",
        **extra,
    )


def _keys(endpoint: str, prefix: str) -> set[str]:
    listed = _client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for o in listed.get("Contents", [])}


def test_storage_operations(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3Storage(
        bucket=BUCKET,
        prefix="unit",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        addressing_style="path",
    )
    store.ping()
    src = tmp_path / "clip.mp4"
    src.write_bytes(bytes(range(256)) * 10)
    assert store.put_file("task_A/0.mp4", src) == 2560
    assert store.put_bytes("task_A/inputs/first.png", b"png-bytes") == 9
    assert store.size("task_A/0.mp4") == 2560 and store.exists("task_A/0.mp4")
    assert store.size("task_A/missing.mp4") is None
    assert store.read_bytes("task_A/inputs/first.png") == b"png-bytes"
    assert b"".join(store.read_range("task_A/0.mp4", 10, 19)) == bytes(range(10, 20))
    url = store.presigned_url("task_A/0.mp4", 60, "video/mp4")
    assert url is not None
    direct = httpx.get(url)
    assert direct.status_code == 200 and len(direct.content) == 2560
    assert _keys(s3_endpoint, "unit/task_A/") == {
        "unit/task_A/0.mp4",
        "unit/task_A/inputs/first.png",
    }
    store.delete_prefix("task_A")
    assert _keys(s3_endpoint, "unit/task_A/") == set()
    with pytest.raises(ValueError):
        store.put_bytes("../escape", b"x")


def test_results_live_in_the_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    settings = _s3_settings(tmp_path / "data", s3_endpoint, "proxy")
    live = LiveServer(settings).start()
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 200, 30)).save(buf, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    try:
        key = live.mint("test")
        with live.client(key) as c:
            body = {"model": "sandbox", "prompt": "s3", "duration": 1, "first_frame_image": image}
            task = wait_task(c, submit(c, body))
            assert task["status"] == "completed", task
            tid = task["id"]
            assert _keys(s3_endpoint, f"proxy/{tid}/") == {
                f"proxy/{tid}/0.mp4",
                f"proxy/{tid}/0.jpg",
                f"proxy/{tid}/inputs/first.png",
            }
            assert not (settings.resolved_media_dir / tid).exists()
            assert c.get("/readyz").json() == {"status": "ready"}
            url = task["result"]["videos"][0]["url"][0]
            with httpx.Client() as bare:
                full = bare.get(url)
                assert full.status_code == 200
                assert full.headers["content-type"] == "video/mp4"
                stored = _client(s3_endpoint).get_object(Bucket=BUCKET, Key=f"proxy/{tid}/0.mp4")
                assert full.content == stored["Body"].read()
                size = len(full.content)
                assert int(full.headers["content-length"]) == size
                part = bare.get(url, headers={"Range": "bytes=100-199"})
                assert part.status_code == 206
                assert part.headers["content-range"] == f"bytes 100-199/{size}"
                assert part.content == full.content[100:200]
                tail = bare.get(url, headers={"Range": "bytes=-10"})
                assert tail.status_code == 206 and tail.content == full.content[-10:]
                outside = bare.get(url, headers={"Range": f"bytes={size}-"})
                assert outside.status_code == 416
                head = bare.head(url)
                assert head.status_code == 200 and int(head.headers["content-length"]) == size
                thumb = bare.get(task["result"]["videos"][0]["thumbnail_url"])
                assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    finally:
        live.stop()


def test_presigned_links_and_retention(s3_endpoint: str, tmp_path: Path) -> None:
    settings = _s3_settings(
        tmp_path / "data", s3_endpoint, "presign", s3_presign=True, result_ttl=3, sweep_interval=0.3
    )
    live = LiveServer(settings).start()
    try:
        key = live.mint("test")
        with live.client(key) as c:
            task = wait_task(c, submit(c, {"model": "sandbox", "prompt": "p", "duration": 1}))
            tid = task["id"]
            url = task["result"]["videos"][0]["url"][0]
            with httpx.Client() as bare:
                redirect = bare.get(url)
                assert redirect.status_code == 307
                assert redirect.headers["location"].startswith(s3_endpoint)
                followed = bare.get(url, follow_redirects=True)
                assert followed.status_code == 200 and followed.content[4:8] == b"ftyp"
            deadline = time.monotonic() + 30
            while _keys(s3_endpoint, f"presign/{tid}/"):
                assert time.monotonic() < deadline, "sweeper did not delete the objects"
                time.sleep(0.2)
            assert httpx.get(url).status_code == 410
    finally:
        live.stop()
