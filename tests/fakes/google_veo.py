"""A local fake of Google's Veo endpoints: the Gemini API and Vertex AI, served on loopback.

It speaks the wire format the `google-genai` SDK uses and Google documents:

Gemini API (`x-goog-api-key` header)
  POST {base}/v1beta/models/{model}:predictLongRunning   {"instances": [...], "parameters": {...}}
       -> {"name": "models/{model}/operations/{id}"}
  GET  {base}/v1beta/models/{model}/operations/{id}
       -> done: {"response": {"generateVideoResponse": {"generatedSamples": [{"video":
          {"uri": ".../v1beta/files/{file}:download?alt=media"}}], "raiMediaFilteredCount": n,
          "raiMediaFilteredReasons": [...]}}}
  GET  {base}/v1beta/files/{file}:download?alt=media      -> the MP4
Vertex AI (`Authorization: Bearer` from the token endpoint or a configured token)
  POST {base}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:predictLongRunning
       -> {"name": "projects/{p}/locations/{l}/publishers/google/models/{m}/operations/{id}"}
  POST {base}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:fetchPredictOperation
       {"operationName": name} -> done: {"response": {"videos": [{"bytesBase64Encoded": ...,
       "mimeType": "video/mp4"} | {"gcsUri": "gs://..."}], "raiMediaFilteredCount": n}}
  GET  {base}/download/storage/v1/b/{bucket}/o/{object}?alt=media   (Cloud Storage JSON API)
  POST {base}/token   (OAuth 2.0 JWT-bearer grant of a service account; RS256 checked)

Errors are Google's JSON error shape `{"error": {"code", "message", "status"}}`, with a
`Retry-After` header where a test asks for one. Operations belong to the key (Gemini API) or
project (Vertex AI) that created them: polling or downloading with another answers 404, as an
operation in another Google project would. The videos are real H.264 MP4s, made with
reelserve's own encoder at a small size, with an AAC track when audio is generated (always on
the Gemini API, which has no `generateAudio` parameter).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import uvicorn
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reelserve.media.video import encode_mp4

GEMINI_MODELS = {"veo-3.1-generate-preview", "veo-3.1-fast-generate-preview"}
VERTEX_MODELS = {
    "veo-3.1-generate-001",
    "veo-3.1-fast-generate-001",
    "veo-3.1-generate-preview",
    "veo-3.1-fast-generate-preview",
}
GEMINI_PARAMETERS = {
    "sampleCount",
    "durationSeconds",
    "aspectRatio",
    "resolution",
    "personGeneration",
    "negativePrompt",
    "enhancePrompt",
}
VERTEX_PARAMETERS = GEMINI_PARAMETERS | {"seed", "generateAudio", "resizeMode", "storageUri"}
SIZES = {"16:9": (256, 144), "9:16": (144, 256)}
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (200, 180, 40)]


@dataclass
class Recorded:
    """One request the fake received."""

    at: float
    method: str
    path: str
    credential: str  # the API key, or "vertex:<project>/<location>" with the bearer token
    body: Any
    headers: dict[str, str]


@dataclass
class Operation:
    name: str
    backend: str
    owner: str  # the API key or vertex project that may see it
    model: str
    parameters: dict[str, Any]
    instance: dict[str, Any]
    polls: int = 0
    done_after: int = 1  # polls that answer "not done" before the answer is done
    finish: bool = True  # False: never done (until a test sets it)
    filtered: tuple[int, list[str]] | None = None
    files: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)


class FakeGoogle:
    """The fake's state, readable and scriptable from tests (thread-safe)."""

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] = (),
        vertex_projects: tuple[tuple[str, str], ...] = (),
        static_tokens: tuple[str, ...] = (),
    ) -> None:
        self.api_keys = set(api_keys)
        self.vertex_projects = set(vertex_projects)
        self.tokens: dict[str, str] = dict.fromkeys(static_tokens, "static")
        self.public_keys: dict[str, rsa.RSAPublicKey] = {}  # service-account email -> key
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.operations: dict[str, Operation] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (owner, bytes)
        self.gcs: dict[str, bytes] = {}  # "bucket/object" -> bytes
        # Scripting
        self.submit_faults: list[dict[str, Any]] = []  # answered in order, one per submit
        self.poll_faults: list[dict[str, Any]] = []
        self.download_faults: list[dict[str, Any]] = []
        self.exhausted: set[str] = set()  # credentials whose submits answer 429 quota
        self.done_after = 1
        self.finish = True
        self.filter_next: tuple[int, list[str]] | None = None
        self.hold_submits = threading.Event()  # set: submits wait until it is cleared
        self.submit_arrived = threading.Event()
        self._videos: dict[tuple[int, str, bool, int], bytes] = {}
        self.url = ""

    # -- test helpers ------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.operations.clear()
            self.submit_faults.clear()
            self.poll_faults.clear()
            self.download_faults.clear()
            self.exhausted.clear()
            self.done_after = 1
            self.finish = True
            self.filter_next = None
        self.hold_submits.clear()
        self.submit_arrived.clear()

    def submits(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.endswith(":predictLongRunning")]

    def requests_for(self, operation: str) -> list[Recorded]:
        """Polls of an operation and downloads of its files."""
        with self.lock:
            op = self.operations[operation]
            out = []
            for r in self.requests:
                if (
                    r.path.endswith(operation)
                    or (isinstance(r.body, dict) and r.body.get("operationName") == operation)
                    or any(f in r.path for f in op.files)
                ):
                    out.append(r)
            return out

    def finish_all(self) -> None:
        with self.lock:
            self.finish = True
            for op in self.operations.values():
                op.finish = True

    def _wait_released(self) -> None:
        deadline = time.monotonic() + 60
        while self.hold_submits.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)

    def add_service_account(self, email: str, key: rsa.RSAPublicKey) -> None:
        self.public_keys[email] = key

    # -- videos ------------------------------------------------------------------------------

    def video(self, duration: int, aspect: str, audio: bool, index: int) -> bytes:
        cache = (duration, aspect, audio, index % len(COLOURS))
        with self.lock:
            if cache in self._videos:
                return self._videos[cache]
        width, height = SIZES[aspect]
        fps = 24
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[:] = COLOURS[index % len(COLOURS)]
        sound = None
        if audio:
            t = np.arange(duration * 48000) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            sound = np.stack([tone, tone])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "v.mp4"
            encode_mp4(
                path,
                (frame for _ in range(duration * fps)),
                width=width,
                height=height,
                fps=fps,
                audio=sound,
            )
            data = path.read_bytes()
        with self.lock:
            self._videos[cache] = data
        return data

    # -- the ASGI app ------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        raw = await request.body()
        body: Any = None
        if raw and request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        elif raw:
            body = raw.decode("utf-8", "replace")
        if path == "/token" and request.method == "POST":
            return self._token(body if isinstance(body, str) else "")
        credential = self._credential(request)
        with self.lock:
            self.requests.append(
                Recorded(
                    at=time.time(),
                    method=request.method,
                    path=path + (f"?{request.url.query}" if request.url.query else ""),
                    credential=credential or "",
                    body=body,
                    headers=dict(request.headers),
                )
            )
        if credential is None:
            return _error(401, "UNAUTHENTICATED", "Request is missing valid credentials.")
        m = re.fullmatch(r"/v1beta/models/([\w.-]+):predictLongRunning", path)
        if m and request.method == "POST":
            return await self._submit("gemini", credential, m.group(1), body)
        m = re.fullmatch(r"/v1beta/(models/[\w.-]+/operations/\w+)", path)
        if m and request.method == "GET":
            return await self._poll("gemini", credential, m.group(1))
        m = re.fullmatch(r"/v1beta/files/(\w+):download", path)
        if m and request.method == "GET":
            return self._download(credential, m.group(1))
        vertex = r"/v1/(projects/([\w-]+)/locations/([\w-]+)/publishers/google/models/([\w.-]+))"
        m = re.fullmatch(vertex + ":predictLongRunning", path)
        if m and request.method == "POST":
            if credential != f"vertex:{m.group(2)}/{m.group(3)}":
                return _error(403, "PERMISSION_DENIED", "Permission denied on the project.")
            return await self._submit("vertex", credential, m.group(4), body)
        m = re.fullmatch(vertex + ":fetchPredictOperation", path)
        if m and request.method == "POST":
            name = body.get("operationName") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name.startswith(m.group(1) + "/operations/"):
                return _error(400, "INVALID_ARGUMENT", "operationName does not match the model")
            return await self._poll("vertex", credential, name)
        m = re.fullmatch(r"/download/storage/v1/b/([\w.-]+)/o/(.+)", path)
        if m and request.method == "GET":
            return self._gcs(credential, f"{m.group(1)}/{m.group(2)}")
        return _error(404, "NOT_FOUND", f"no such method: {request.method} {path}")

    def _credential(self, request: Request) -> str | None:
        key = request.headers.get("x-goog-api-key")
        if key is not None:
            return key if key in self.api_keys else None
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ")
            if token in self.tokens:
                match = re.search(r"/projects/([\w-]+)/locations/([\w-]+)/", request.url.path)
                if match:
                    return f"vertex:{match.group(1)}/{match.group(2)}"
                return "vertex:storage"
        return None

    def _fault(self, faults: list[dict[str, Any]]) -> Response | None:
        with self.lock:
            fault = faults.pop(0) if faults else None
        if fault is None:
            return None
        headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
        return _error(fault["code"], fault["status"], fault["message"], headers=headers)

    async def _submit(self, backend: str, credential: str, model: str, body: Any) -> Response:
        self.submit_arrived.set()
        # Held by a test (threading.Event: set from the test's thread): answer only later.
        await asyncio.to_thread(self._wait_released)
        if credential in self.exhausted:
            return _error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests",
            )
        fault = self._fault(self.submit_faults)
        if fault is not None:
            return fault
        models = GEMINI_MODELS if backend == "gemini" else VERTEX_MODELS
        if model not in models:
            return _error(404, "NOT_FOUND", f"models/{model} is not found for predictLongRunning")
        problem = _check_request(backend, body)
        if problem is not None:
            return _error(400, "INVALID_ARGUMENT", problem)
        op_id = secrets.token_hex(8)
        if backend == "gemini":
            name = f"models/{model}/operations/{op_id}"
        else:
            project = credential.removeprefix("vertex:")
            p, loc = project.split("/")
            name = (
                f"projects/{p}/locations/{loc}/publishers/google/models/{model}/operations/{op_id}"
            )
        with self.lock:
            self.operations[name] = Operation(
                name=name,
                backend=backend,
                owner=credential,
                model=model,
                parameters=dict(body.get("parameters") or {}),
                instance=dict(body["instances"][0]),
                done_after=self.done_after,
                finish=self.finish,
                filtered=self.filter_next,
            )
        return JSONResponse({"name": name})

    async def _poll(self, backend: str, credential: str, name: str) -> Response:
        with self.lock:
            op = self.operations.get(name)
            visible = op is not None and op.owner == credential and op.backend == backend
        if op is None or not visible:
            return _error(404, "NOT_FOUND", f"Operation {name} not found.")
        fault = self._fault(self.poll_faults)
        if fault is not None:
            return fault
        with self.lock:
            op.polls += 1
            done = op.finish and op.polls > op.done_after
        if not done:
            return JSONResponse({"name": name, "metadata": {"progress": op.polls}})
        result = await asyncio.to_thread(self._result, op)  # encodes the videos
        return JSONResponse({"name": name, "done": True, "response": result})

    def _result(self, op: Operation) -> dict[str, Any]:
        params = op.parameters
        count = int(params.get("sampleCount", 1))
        duration = int(params.get("durationSeconds", 8))
        aspect = str(params.get("aspectRatio", "16:9"))
        audio = op.backend == "gemini" or bool(params.get("generateAudio", False))
        filtered_count, reasons = op.filtered or (0, [])
        delivered = max(0, count - filtered_count)
        if op.backend == "gemini":
            samples = []
            for index in range(delivered):
                file_id = secrets.token_hex(6)
                data = self.video(duration, aspect, audio, index)
                with self.lock:
                    self.files[file_id] = (op.owner, data)
                    op.files.append(file_id)
                uri = f"{self.url}/v1beta/files/{file_id}:download?alt=media"
                samples.append({"video": {"uri": uri}})
            inner: dict[str, Any] = {"generatedSamples": samples}
            if filtered_count:
                inner["raiMediaFilteredCount"] = filtered_count
                inner["raiMediaFilteredReasons"] = reasons
            return {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                "PredictLongRunningResponse",
                "generateVideoResponse": inner,
            }
        videos = []
        storage = params.get("storageUri")
        for index in range(delivered):
            data = self.video(duration, aspect, audio, index)
            if storage:
                obj = f"{storage.removeprefix('gs://').rstrip('/')}/sample_{index}.mp4"
                with self.lock:
                    self.gcs[obj] = data
                    op.files.append(obj.split("/", 1)[1])
                videos.append({"gcsUri": f"gs://{obj}", "mimeType": "video/mp4"})
            else:
                encoded = base64.b64encode(data).decode()
                videos.append({"bytesBase64Encoded": encoded, "mimeType": "video/mp4"})
        out: dict[str, Any] = {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
            "raiMediaFilteredCount": filtered_count,
            "videos": videos,
        }
        if reasons:
            out["raiMediaFilteredReasons"] = reasons
        return out

    def _download(self, credential: str, file_id: str) -> Response:
        with self.lock:
            entry = self.files.get(file_id)
        if entry is None or entry[0] != credential:
            return _error(404, "NOT_FOUND", f"File {file_id} not found.")
        fault = self._fault(self.download_faults)
        if fault is not None:
            return fault
        return Response(entry[1], media_type="video/mp4")

    def _gcs(self, credential: str, obj: str) -> Response:
        from urllib.parse import unquote

        with self.lock:
            data = self.gcs.get(unquote(obj))
        if data is None:
            return _error(404, "NOT_FOUND", f"No such object: {unquote(obj)}")
        return Response(data, media_type="video/mp4")

    def _token(self, form: str) -> Response:
        fields = {k: v[0] for k, v in parse_qs(form).items()}
        if fields.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        assertion = fields.get("assertion", "")
        try:
            head, payload, signature = assertion.split(".")
            claims = json.loads(_unb64(payload))
            key = self.public_keys[claims["iss"]]
            key.verify(
                _unb64(signature),
                f"{head}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        if "cloud-platform" not in str(claims.get("scope", "")) or claims["exp"] < time.time():
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        token = "ya29.fake-" + secrets.token_hex(8)
        with self.lock:
            self.tokens[token] = str(claims["iss"])
        return JSONResponse({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})


def _check_request(backend: str, body: Any) -> str | None:
    """What Google would answer 400 to (the parts of the format reelserve relies on)."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        return "instances is required"
    if len(body["instances"]) != 1:
        return "exactly one instance is supported"
    instance = body["instances"][0]
    if not isinstance(instance.get("prompt"), str) or not instance["prompt"]:
        return "instances[0].prompt is required"
    allowed = {"prompt", "image", "lastFrame"}
    if set(instance) - allowed:
        return f"unsupported instance fields: {sorted(set(instance) - allowed)}"
    for name in ("image", "lastFrame"):
        image = instance.get(name)
        if image is None:
            continue
        if "mimeType" not in image or "bytesBase64Encoded" not in image:
            return f"instances[0].{name} needs bytesBase64Encoded and mimeType"
        try:
            base64.b64decode(image["bytesBase64Encoded"], validate=True)
        except ValueError:
            return f"instances[0].{name}.bytesBase64Encoded is not base64"
    if "lastFrame" in instance and "image" not in instance:
        return "lastFrame needs image"
    params = body.get("parameters") or {}
    allowed_params = GEMINI_PARAMETERS if backend == "gemini" else VERTEX_PARAMETERS
    extra = set(params) - allowed_params
    if extra:
        return f"{', '.join(sorted(extra))} parameter is not supported"
    duration = params.get("durationSeconds", 8)
    if duration not in (4, 6, 8):
        return f"durationSeconds must be 4, 6 or 8 (got {duration})"
    resolutions = ("720p", "1080p", "4k") if backend == "gemini" else ("720p", "1080p")
    resolution = params.get("resolution", "720p")
    if resolution not in resolutions:
        return f"resolution {resolution!r} is not supported"
    if resolution != "720p" and duration != 8:
        return f"resolution {resolution} needs durationSeconds 8"
    if params.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
        return "aspectRatio must be 16:9 or 9:16"
    if params.get("personGeneration", "allow_adult") not in (
        "allow_all",
        "allow_adult",
        "dont_allow",
    ):
        return "personGeneration must be allow_all, allow_adult or dont_allow"
    if not 1 <= int(params.get("sampleCount", 1)) <= 4:
        return "sampleCount must be between 1 and 4"
    if "resizeMode" in params and (
        str(params["resizeMode"]).lower() not in ("pad", "crop") or "image" not in instance
    ):
        return "resizeMode must be pad or crop, with an image"
    seed = params.get("seed")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= 4294967295):
        return "seed must be an unsigned 32-bit integer"
    return None


def _error(
    code: int, status: str, message: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": status}},
        status_code=code,
        headers=headers,
    )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@contextlib.contextmanager
def serve(fake: FakeGoogle) -> Iterator[FakeGoogle]:
    """Serve `fake` with uvicorn on 127.0.0.1 in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(fake, log_level="warning", access_log=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Google server did not start")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def service_account(fake: FakeGoogle, directory: Path, email: str) -> Path:
    """A service-account key file whose token endpoint is the fake (a real RSA key pair)."""
    from cryptography.hazmat.primitives import serialization

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake.add_service_account(email, private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": secrets.token_hex(8),
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": f"{fake.url}/token",
    }
    path = directory / f"{email.split('@')[0]}.json"
    path.write_text(json.dumps(info))
    return path
