"""A bad outbound policy setting stops the server at startup, with a message naming the setting,
what it expects and what came (it used to load, and fail the first submit with an image)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.support import free_port, make_settings

PINNED = "pinned to IP addresses"
BAD = [
    ("image_allow_networks", ["10.0.0.0/8", "nope"], "expected IP networks in CIDR form", "'nope'"),
    ("webhook_allow_networks", ["10.0.0.0/33"], "expected IP networks in CIDR form", "/33"),
    ("image_allow_hosts", ["https://images.example.com/"], "expected host names", "no scheme"),
    ("webhook_allow_hosts", ["hooks.example.com:8443"], "expected host names", ":8443"),
    ("image_allow_hosts", ["10.1.2.3"], "addresses go in image_allow_networks", "an IP address"),
    ("webhook_allow_hosts", ["*.*.example.com"], "expected host names", "'*.*.example.com'"),
    ("image_allow_hosts", ["intranet.10"], "expected host names", "read as an IPv4 address"),
    ("image_resolve_overrides", {"images.test": "localhost"}, PINNED, "'localhost'"),
    ("image_resolve_overrides", {"http://x": "127.0.0.1"}, PINNED, "'http://x'"),
]


@pytest.mark.parametrize(("name", "value", "expected", "came"), BAD)
def test_a_bad_policy_value_is_refused_naming_the_setting(
    tmp_path: Path, name: str, value: object, expected: str, came: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings(tmp_path, **{name: value})
    message = str(refused.value)
    assert f"{name}: " in message and expected in message and came in message, message


def test_good_policy_values_load(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        image_allow_networks=["10.1.0.0/16", "fd00::/8", "127.0.0.1"],
        image_allow_hosts=["images.internal", "*.example.com", "localhost", "bücher.example"],
        image_resolve_overrides={"images.test": "127.0.0.1", "v6.test": "[::1]"},
        webhook_allow_hosts=["hooks.internal."],
        webhook_allow_networks=["192.168.0.0/24"],
    )
    assert settings.image_allow_hosts[1] == "*.example.com"


def test_serve_with_a_bad_value_fails_at_startup(tmp_path: Path) -> None:
    """`reelserve serve` stops before listening, and says which setting and what came."""
    port = free_port()
    env = {
        **os.environ,
        "REELSERVE_IMAGE_ALLOW_NETWORKS": '["10.0.0.0/8", "internal-images"]',
        "_TYPER_STANDARD_TRACEBACK": "1",  # plain text, not a box wrapped to the terminal
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "reelserve", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr  # the message alone, no pydantic dump
    assert "reelserve is serving" not in done.stdout  # no key minted, nothing served
    assert "image_allow_networks: expected IP networks in CIDR form" in done.stderr, done.stderr
    assert "got 'internal-images'" in done.stderr, done.stderr
