"""The remote reward service: ``flowdppo reward-server --reward NAME --port P``.

Serves one registered reward over HTTP (FastAPI + uvicorn) so that a heavy model (e.g. a VLM
judge) can run on its own GPU while the trainer uses the ``remote`` reward as a client. The wire
format is in :mod:`flowdppo.rewards.protocol` (JSON + base64 PNG, never pickle).

Security: binds to 127.0.0.1 by default; an optional shared-secret token (``--token``,
``--token-file`` or ``$FLOWDPPO_REWARD_TOKEN``) is required as ``Authorization: Bearer <token>``
and compared in constant time; binding to a non-loopback address without a token is refused
unless ``--insecure-no-token`` is given.

Memory: every bound is checked before the work it guards (:class:`Limits`). A body over
``--max-bytes`` is refused (413) before it is read; then, from the images' headers alone, a
request of more than ``--max-images`` images or ``--max-request-pixels`` pixels in all (413) and
an image over ``--max-pixels`` (400). Parsing, decoding and scoring run on ``--workers`` threads,
never on the event loop (``/health`` answers meanwhile); at most ``--queue`` admitted requests
wait for one, and a request beyond that is answered 503 with ``Retry-After`` before its body is
kept. A refused body is read and discarded (bounded) before the answer, so that a client still
sending it reads the answer instead of a connection reset.
"""

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

from flowdppo.rewards.base import Reward, build_reward
from flowdppo.rewards.compute import RewardError, _validate
from flowdppo.rewards.protocol import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ProtocolError,
    parse_request,
    scores_to_json,
)
from flowdppo.rewards.utils import check_positive_int

logger = logging.getLogger(__name__)
DEFAULT_MAX_IMAGES = 256  # per request
DEFAULT_MAX_REQUEST_PIXELS = DEFAULT_MAX_PIXELS  # per request: 16 images of 1024², one of 4096²
DEFAULT_WORKERS = 2
DEFAULT_QUEUE = 8
DRAIN_BYTES = 1 << 30  # a refused body is read and dropped up to this many bytes ...
DRAIN_S = 30.0  # ... and for at most this long, then the connection is closed


class _HTTPFail(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclass(frozen=True)
class Limits:
    """What the server admits (the CLI flags of the same names; docs/rewards.md)."""

    max_bytes: int = DEFAULT_MAX_BYTES  # request body, bytes (413, before it is read)
    max_pixels: int = DEFAULT_MAX_PIXELS  # one image's W·H, from its header (400)
    max_images: int = DEFAULT_MAX_IMAGES  # images in one request (413)
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # Σ W·H of a request, from headers (413)
    workers: int = DEFAULT_WORKERS  # threads that parse, decode and score
    queue: int = DEFAULT_QUEUE  # admitted requests waiting for a worker; one more is a 503

    def __post_init__(self) -> None:
        for field in ("max_bytes", "max_pixels", "max_images", "max_request_pixels", "workers"):
            check_positive_int(getattr(self, field), field)
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) or self.queue < 0:
            raise ValueError(f"queue must be an integer >= 0, got {self.queue!r}")


def _jsonable(t: torch.Tensor) -> Any:
    """Tensor → nested lists with ``None`` for non-finite floats (JSON has no NaN)."""
    return _finite_or_none(t.double().tolist()) if t.is_floating_point() else t.tolist()


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x if math.isfinite(x) else None


def score_batch(reward: Reward, name: str, images, prompts, metadata) -> dict[str, Any]:
    """Run ``reward`` over a decoded request in chunks of its batch size → response JSON."""
    scores, details = [], {}
    bs = int(reward.batch_size)
    for start in range(0, images.shape[0], bs):
        chunk = images[start : start + bs].to(reward.device)
        out = reward(chunk, prompts[start : start + bs], metadata[start : start + bs])
        scores.append(_validate(name, out, chunk.shape[0]))
        for key, value in out.details.items():
            details.setdefault(key, []).append(value.detach().cpu())
    all_scores = torch.cat(scores)
    return {
        "version": PROTOCOL_VERSION,
        "reward": name,
        "scores": scores_to_json(all_scores),
        "details": {k: _jsonable(torch.cat(v)) for k, v in details.items()},
    }


def parse_json(raw: bytes) -> Any:
    """The request body → JSON value; anything the parser refuses is a ProtocolError (400)."""
    try:
        return json.loads(raw)
    except RecursionError:  # e.g. "[[[[..." 100k deep: the input's fault, not the reward's
        raise ProtocolError(
            f"body is nested too deeply to parse (deeper than about {sys.getrecursionlimit()})"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, a 5000-digit integer
        raise ProtocolError(f"body is not JSON: {exc}") from exc


def _image_size(i: int, item: Any) -> tuple[int, int]:
    """(width, height) of ``images[i]`` read from its header; no pixel is decoded."""
    from PIL import Image

    if not isinstance(item, str):
        raise ProtocolError(f"images[{i}] must be a base64 string, got {type(item).__name__}")
    try:
        raw = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"images[{i}] is not valid base64: {exc}") from exc
    try:
        with Image.open(io.BytesIO(raw)) as im:  # lazy: reads the header only
            fmt, size = im.format, im.size
    except Exception as exc:  # PIL raises several types for what is not an image
        raise ProtocolError(f"images[{i}] is not a readable image: {exc}") from exc
    if fmt != "PNG":
        raise ProtocolError(f"images[{i}] must be a PNG, got {fmt}")
    return size


def check_request(body: Any, limits: Limits) -> None:
    """Refuse a ``/score`` body over the request limits from its images' headers alone.

    413 for more than ``max_images`` images or more than ``max_request_pixels`` pixels in all;
    400 for an image that is not a PNG or is over ``max_pixels``. Malformed bodies are left to
    :func:`parse_request`, which names what is wrong.
    """
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list):
        return
    if len(images) > limits.max_images:
        raise _HTTPFail(
            413,
            f"request holds {len(images)} images; the limit is {limits.max_images} per request "
            "(--max-images)",
        )
    sizes = [_image_size(i, item) for i, item in enumerate(images)]
    for i, (w, h) in enumerate(sizes):
        if w * h > limits.max_pixels:
            raise ProtocolError(f"images[{i}] has {w}x{h} pixels > {limits.max_pixels}")
    total = sum(w * h for w, h in sizes)
    if total > limits.max_request_pixels:
        w, h = max(sizes, key=lambda s: s[0] * s[1])
        raise _HTTPFail(
            413,
            f"request holds {total} pixels in {len(sizes)} images (largest {w}x{h}); the limit "
            f"is {limits.max_request_pixels} per request (--max-request-pixels)",
        )


def decode_request(body: Any, limits: Limits) -> tuple[torch.Tensor, list[str], list[dict]]:
    """:func:`check_request`, then :func:`parse_request`; pixels that cannot be decoded are a
    ProtocolError naming the first such image (a truncated PNG is the input's fault)."""
    from PIL import Image

    check_request(body, limits)
    try:
        return parse_request(body, limits.max_pixels)
    except (ProtocolError, MemoryError):
        raise
    except Exception as exc:  # Pillow: OSError (truncated), SyntaxError, zlib.error, ...
        which = "an image"
        for i, item in enumerate(body["images"]):
            try:
                with Image.open(io.BytesIO(base64.b64decode(item))) as im:
                    im.load()
            except Exception:
                which = f"images[{i}]"
                break
        raise ProtocolError(f"{which} cannot be decoded: {type(exc).__name__}: {exc}") from exc


class WorkerPool:
    """``workers`` threads behind an admission count of ``workers + queue`` requests.

    A slot is taken before a request's body is read and given back when its work ends, so at
    most ``workers + queue`` bodies are held and ``workers`` are decoded at once.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.capacity = workers, workers + queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="reward-worker")
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_s = 1.0  # moving average of one request's work, for Retry-After

    def try_acquire(self) -> bool:
        with self._lock:
            if self._admitted >= self.capacity:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the admitted requests' expected work."""
        with self._lock:
            spread = self._admitted / self.workers
            return max(1, min(60, math.ceil(self._mean_s * spread)))

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on a worker; the caller's slot is released when it ends."""

        def timed():
            start = time.monotonic()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - start)

        future = self.executor.submit(timed)
        future.add_done_callback(lambda _: self.release())
        return future


def _check_token(header: str | None, token: str | None) -> None:
    if token is None:
        return
    expected = f"Bearer {token}".encode()
    if header is None or not hmac.compare_digest(header.encode(), expected):
        raise _HTTPFail(401, "missing or wrong token (send 'Authorization: Bearer <token>')")


class _Body:
    """A request body read through ASGI ``receive``: bounded, and drainable before an error."""

    def __init__(self, request: Any) -> None:
        self.request, self.done = request, False

    async def _next(self) -> bytes:
        message = await self.request.receive()
        if message["type"] == "http.disconnect":
            self.done = True
            return b""
        self.done = not message.get("more_body", False)
        return message.get("body", b"")

    def check_declared(self, max_bytes: int) -> None:
        declared = self.request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            raise _HTTPFail(
                413, f"request of {declared} bytes exceeds the limit of {max_bytes} bytes"
            )

    async def read(self, max_bytes: int) -> bytes:
        buf = bytearray()
        while not self.done:
            buf += await self._next()
            if len(buf) > max_bytes:  # bodies without a Content-Length are counted as they come
                raise _HTTPFail(413, f"request exceeds the limit of {max_bytes} bytes")
        return bytes(buf)

    async def drain(self) -> None:
        """Read and drop what is left (at most DRAIN_BYTES, DRAIN_S): a client that is still
        sending then reads the answer; closing on unread data would reset its connection."""

        async def run() -> None:
            dropped = 0
            while not self.done and dropped <= DRAIN_BYTES:
                dropped += len(await self._next())

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(run(), DRAIN_S)


def create_app(reward: Reward, name: str, *, token: str | None = None, **limits: int) -> Any:
    """The FastAPI application serving ``reward``; ``limits`` are :class:`Limits` fields.

    One batch is scored at a time (a lock guards the model); parsing and decoding of up to
    ``workers`` requests run alongside it.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    lim = Limits(**limits)
    pool = WorkerPool(lim.workers, lim.queue)
    lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"flowdppo reward server ({name})", docs_url=None, redoc_url=None, lifespan=lifespan
    )

    def work(raw: bytes) -> dict[str, Any]:  # on a worker thread
        images, prompts, metadata = decode_request(parse_json(raw), lim)
        with lock:
            return score_batch(reward, name, images, prompts, metadata)

    async def handle(request: Request, work, body: _Body | None = None) -> JSONResponse:
        try:
            _check_token(request.headers.get("authorization"), token)
            return JSONResponse(await work())
        except _HTTPFail as exc:
            status, error, headers = exc.status, str(exc), exc.headers
        except ProtocolError as exc:
            status, error, headers = 400, f"bad request: {exc}", None
        except Exception as exc:  # the reward failed: report it, keep serving
            logger.exception("reward %r failed", name)
            msg = str(exc) if isinstance(exc, RewardError) else f"{type(exc).__name__}: {exc}"
            status, error, headers = 500, f"reward {name!r} failed: {msg}", None
        if body is not None:
            await body.drain()
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        async def answer():
            return {"status": "ok"}

        return await handle(request, answer)

    @app.get("/info")
    async def info(request: Request) -> JSONResponse:
        async def answer():
            return {
                "version": PROTOCOL_VERSION,
                "reward": name,
                "batch_size": reward.batch_size,
                **asdict(lim),
            }

        return await handle(request, answer)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        body = _Body(request)

        async def answer():
            body.check_declared(lim.max_bytes)
            if not pool.try_acquire():
                wait_s = pool.retry_after_s()
                raise _HTTPFail(
                    503,
                    f"busy: at its limit of {pool.capacity} requests scored or queued "
                    f"(--workers {lim.workers}, --queue {lim.queue}); retry in {wait_s} s",
                    headers={"Retry-After": str(wait_s)},
                )
            try:
                future = pool.submit(work, await body.read(lim.max_bytes))
            except BaseException:  # the slot is ours until a submitted future takes it over
                pool.release()
                raise
            return await asyncio.wrap_future(future)

        return await handle(request, answer, body)

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve_token(args: argparse.Namespace) -> str | None:
    if args.token and args.token_file:
        raise SystemExit("reward-server: give --token or --token-file, not both")
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise SystemExit(f"reward-server: --token-file {args.token_file} is empty")
        return token
    return args.token or os.environ.get(TOKEN_ENV) or None


def _port(text: str) -> int:
    """argparse type: a TCP port number (argparse reports a bad one, exit code 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1-65535, got {port}")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``reward-server`` options (shared by the CLI and ``python -m``)."""
    p.add_argument("--reward", required=True, help="registered reward name to serve")
    p.add_argument("--reward-kwargs", default="{}", help="JSON object of the reward's options")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=_port, default=8765, help="TCP port 1-65535 (default: 8765)")
    p.add_argument("--token", default=None, help=f"shared secret (default: ${TOKEN_ENV})")
    p.add_argument("--token-file", default=None, help="read the shared secret from this file")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image (W·H)")
    p.add_argument(
        "--max-images", type=int, default=DEFAULT_MAX_IMAGES, help="most images in one request"
    )
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help="most pixels (sum of W·H) in one request, read from the image headers",
    )
    p.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="threads that decode and score"
    )
    p.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        help="requests waiting for a worker; one more is answered 503 with Retry-After",
    )
    p.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="allow a non-loopback --host without a token (anyone who can reach it can use it)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run_from_args(args: argparse.Namespace) -> int:
    """Build the reward and serve it until interrupted."""
    import uvicorn

    try:
        kwargs = json.loads(args.reward_kwargs)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"reward-server: --reward-kwargs is not JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise SystemExit(f"reward-server: --reward-kwargs must be a JSON object, got {kwargs!r}")
    limits = {field: getattr(args, field) for field in Limits.__dataclass_fields__}
    for field, value in limits.items():
        floor = 0 if field == "queue" else 1
        if value < floor:
            flag = "--" + field.replace("_", "-")
            raise SystemExit(f"reward-server: {flag} must be >= {floor}, got {value}")
    token = _resolve_token(args)
    if token is None and not _is_loopback(args.host) and not args.insecure_no_token:
        raise SystemExit(
            f"reward-server: refusing to serve on non-loopback host {args.host!r} without a token; "
            f"set --token/--token-file/${TOKEN_ENV} or pass --insecure-no-token"
        )
    logging.basicConfig(level=args.log_level.upper())
    reward = build_reward(args.reward, **kwargs)
    app = create_app(reward, args.reward, token=token, **limits)
    logger.info("serving reward %r on http://%s:%d", args.reward, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``reward-server`` subcommand to the ``flowdppo`` CLI; sets ``func``."""
    p = subparsers.add_parser(
        "reward-server",
        help="serve a reward over HTTP for the 'remote' reward",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowdppo.rewards.server")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
