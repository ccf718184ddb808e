"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

It is deliberately lighter than a general HTTP client, so that on a small machine the client costs
less than the servers it measures; both servers of a comparison are driven by the same client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    connections: int = 16,
    duration: float = 5.0,
    warmup: float = 1.0,
) -> LoadResult:
    """Send `request` (a complete HTTP/1.1 request) over `connections` keep-alive connections
    for `duration` seconds after `warmup`; count responses by status."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    counting = False
    stop = False

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not stop:
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                if counting:
                    statuses[status] = statuses.get(status, 0) + 1
                    latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(connections)]
    await asyncio.sleep(warmup)
    counting = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    counting = False
    elapsed = time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return LoadResult(sum(statuses.values()), elapsed, statuses, latencies)


def http_request(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
