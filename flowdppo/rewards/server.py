"""The remote reward service: ``flowdppo reward-server --reward NAME --port P``.

Serves one registered reward over HTTP (FastAPI + uvicorn) so that a heavy model (e.g. a VLM
judge) can run on its own GPU while the trainer uses the ``remote`` reward as a client. The wire
format is in :mod:`flowdppo.rewards.protocol` (JSON + base64 PNG, never pickle).

Security: binds to 127.0.0.1 by default; an optional shared-secret token (``--token``,
``--token-file`` or ``$FLOWDPPO_REWARD_TOKEN``) is required as ``Authorization: Bearer <token>``
and compared in constant time; binding to a non-loopback address without a token is refused
unless ``--insecure-no-token`` is given. Requests larger than ``--max-bytes`` are refused (413)
before they are decoded, and images above ``--max-pixels`` are refused before they are unpacked.
"""

import argparse
import hmac
import ipaddress
import json
import logging
import math
import os
import sys
import threading
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

logger = logging.getLogger(__name__)


class _HTTPFail(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def _check_token(header: str | None, token: str | None) -> None:
    if token is None:
        return
    expected = f"Bearer {token}".encode()
    if header is None or not hmac.compare_digest(header.encode(), expected):
        raise _HTTPFail(401, "missing or wrong token (send 'Authorization: Bearer <token>')")


async def _read_limited(request: Any, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise _HTTPFail(413, f"request of {declared} bytes exceeds the limit of {max_bytes} bytes")
    buf = bytearray()
    async for part in request.stream():
        buf += part
        if len(buf) > max_bytes:  # bodies without a Content-Length are counted as they come
            raise _HTTPFail(413, f"request exceeds the limit of {max_bytes} bytes")
    return bytes(buf)


def create_app(
    reward: Reward,
    name: str,
    *,
    token: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Any:
    """The FastAPI application serving ``reward`` (one batch at a time: a lock guards the model)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"flowdppo reward server ({name})", docs_url=None, redoc_url=None)
    lock = threading.Lock()

    def locked_score(images, prompts, metadata) -> dict[str, Any]:
        with lock:
            return score_batch(reward, name, images, prompts, metadata)

    async def handle(request: Request, work) -> JSONResponse:
        try:
            _check_token(request.headers.get("authorization"), token)
            return JSONResponse(await work())
        except _HTTPFail as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except ProtocolError as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        except Exception as exc:  # the reward failed: report it, keep serving
            logger.exception("reward %r failed", name)
            msg = str(exc) if isinstance(exc, RewardError) else f"{type(exc).__name__}: {exc}"
            return JSONResponse({"error": f"reward {name!r} failed: {msg}"}, status_code=500)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        async def work():
            return {"status": "ok"}

        return await handle(request, work)

    @app.get("/info")
    async def info(request: Request) -> JSONResponse:
        async def work():
            limits = {"max_bytes": max_bytes, "max_pixels": max_pixels}
            return {
                "version": PROTOCOL_VERSION,
                "reward": name,
                "batch_size": reward.batch_size,
                **limits,
            }

        return await handle(request, work)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        async def work():
            raw = await _read_limited(request, max_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ProtocolError(f"body is not JSON: {exc}") from exc
            images, prompts, metadata = parse_request(body, max_pixels)
            return await run_in_threadpool(locked_score, images, prompts, metadata)

        return await handle(request, work)

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
    for flag, value in (("--max-bytes", args.max_bytes), ("--max-pixels", args.max_pixels)):
        if value < 1:
            raise SystemExit(f"reward-server: {flag} must be >= 1, got {value}")
    token = _resolve_token(args)
    if token is None and not _is_loopback(args.host) and not args.insecure_no_token:
        raise SystemExit(
            f"reward-server: refusing to serve on non-loopback host {args.host!r} without a token; "
            f"set --token/--token-file/${TOKEN_ENV} or pass --insecure-no-token"
        )
    logging.basicConfig(level=args.log_level.upper())
    reward = build_reward(args.reward, **kwargs)
    app = create_app(
        reward, args.reward, token=token, max_bytes=args.max_bytes, max_pixels=args.max_pixels
    )
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
