"""The HTTP app: OpenAI's `/v1/models`, `/v1/completions`, `/v1/chat/completions`, and `/v1/fixes`.

Every request passes `Guard` first (the API key, when the server has one, and the body-size
bound); every error leaves as the API's error object with a 4xx status (a 500 only for a bug,
whose traceback goes to the server log, never to the client). Generation runs in the
`Generator`'s worker, fix changes in a thread of their own, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from clmedit.errors import ClmeditError, describe_validation
from clmedit.fixes.cases import parse_fix
from clmedit.serve.generation import Generator, Job, Sampling
from clmedit.serve.guard import BodyTooLarge, Guard
from clmedit.serve.prompts import chat_prompt
from clmedit.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    FixesRequest,
    Limits,
    chat_chunk,
    chat_completion,
    completion,
    error_body,
    new_id,
    usage,
)
from clmedit.serve.store import FixStore

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client caused: its status and message go back in the API's shape."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def create_app(store: FixStore, model_id: str, api_key: str | None = None, limits: Limits = Limits(),
               max_batch: int = 8) -> FastAPI:  # fmt: skip
    """The app serving `store`'s model as `model_id`; a request needs `api_key` when one is given."""
    generator = Generator(store, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(generator.close)  # the batch running finishes; nothing new starts

    app = FastAPI(title="clmedit serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    _errors(app)

    def check_model(name: str) -> None:
        if name != model_id:
            raise APIError(
                404, f"the model {name!r} does not exist; this server serves {model_id!r}", "model_not_found"
            )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "clmedit"}],
        }

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        check_model(req.model)
        if len(req.prompt) > limits.max_prompts:
            raise APIError(400, f"give at most {limits.max_prompts} prompts in one request")
        jobs = [_job(req, p, 16, limits) for p in req.prompt]
        rid = new_id("cmpl")
        if req.stream:

            def chunk(i: int, delta: str | None, finish: str | None) -> dict[str, Any]:
                return completion(model_id, rid, [{"index": i, "text": delta, "finish_reason": finish}], None)

            return StreamingResponse(_stream(generator, jobs, chunk), media_type="text/event-stream")
        done = await _answers(generator, jobs)
        return completion(model_id, rid, done, _usage(done))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        check_model(req.model)
        try:
            prompt = chat_prompt(store.tok, [(m.role, m.text()) for m in req.messages])
        except ValueError as err:
            raise APIError(400, str(err)) from None
        job = _job(req, prompt, limits.max_tokens, limits)
        rid = new_id("chatcmpl")
        if req.stream:

            def chunk(i: int, delta: str | None, finish: str | None) -> dict[str, Any]:
                return chat_chunk(model_id, rid, _chat_delta(delta, finish), finish)

            return StreamingResponse(
                _stream(generator, [job], chunk, opener=True), media_type="text/event-stream"
            )
        (done,) = await _answers(generator, [job])
        return chat_completion(model_id, rid, done["text"], done["finish_reason"], _usage([done]))

    _fix_routes(app, store, limits)
    return app


def _fix_routes(app: FastAPI, store: FixStore, limits: Limits) -> None:
    """/v1/fixes: list the fixes in the model, add some (applied at once), take one back."""

    @app.get("/v1/fixes")
    async def list_fixes() -> dict[str, Any]:
        return {"object": "list", "data": store.records()}

    @app.post("/v1/fixes")
    async def add_fixes(req: FixesRequest) -> dict[str, Any]:
        if len(req.fixes) > limits.max_fixes:
            raise APIError(400, f"give at most {limits.max_fixes} fixes in one request")
        cases = []
        for i, obj in enumerate(req.fixes):
            try:
                cases.append(parse_fix(obj, i, req.task))
            except ValidationError as err:
                raise APIError(
                    400, f"fix {i + 1} is not a valid edit case ({describe_validation(err)})"
                ) from None
            except ClmeditError as err:
                raise APIError(400, f"fix {i + 1} {err}") from None
        return {"object": "list", "data": await run_in_threadpool(store.add, cases)}

    @app.delete("/v1/fixes/{fix_id}")
    async def delete_fix(fix_id: str) -> dict[str, Any]:
        try:
            gone = await run_in_threadpool(store.delete, fix_id)
        except KeyError:
            raise APIError(
                404, f"there is no fix {fix_id!r}; GET /v1/fixes lists them", "fix_not_found"
            ) from None
        return {**gone, "deleted": True}


def _job(req: CompletionRequest | ChatRequest, prompt: str, default: int, limits: Limits) -> Job:
    try:
        n = req.new_tokens(default, limits.max_tokens)
    except ValueError as err:
        raise APIError(400, str(err)) from None
    sampling = Sampling(req.temperature or 0.0, req.top_p or 1.0)
    return Job(prompt, n, emit=lambda e: None, sampling=sampling, stop=list(req.stop or []))


def _usage(done: list[dict[str, Any]]) -> dict[str, int]:
    return usage(*(sum(d["usage"][k] for d in done) for k in ("prompt_tokens", "completion_tokens")))


def _chat_delta(delta: str | None, finish: str | None) -> dict[str, str]:
    """A chat chunk's delta: the opener (None) names the role, the last one is empty."""
    if delta is None:
        return {"role": "assistant", "content": ""}
    return {} if finish is not None else {"content": delta}


def _listen(job: Job) -> asyncio.Queue:
    """Route `job`'s events (emitted in the worker's thread) into a queue of this event loop."""
    events: asyncio.Queue = asyncio.Queue()
    job.emit = _sender(events.put_nowait)
    return events


def _sender(put: Callable[[Any], None]) -> Callable[[Any], None]:
    """`put`, callable from the worker's thread: run in this event loop (dropped once it is closed)."""
    loop = asyncio.get_running_loop()

    def send(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for this answer
            loop.call_soon_threadsafe(put, item)

    return send


async def _answers(generator: Generator, jobs: list[Job]) -> list[dict[str, Any]]:
    """Each job's whole answer: text, finish_reason, usage."""
    queues = [_listen(j) for j in jobs]
    for job in jobs:
        generator.submit(job)
    out = []
    try:
        for events in queues:
            text = []
            while "delta" in (e := await events.get()):
                text.append(e["delta"])
            if "error" in e:
                raise APIError(e["status"], e["error"])
            out.append({"text": "".join(text), "finish_reason": e["done"], "usage": e["usage"]})
    finally:  # an error, or the client gone: the others stop at their next token
        for job in jobs:
            job.cancelled = True
    return out


async def _stream(generator: Generator, jobs: list[Job], chunk, opener: bool = False) -> AsyncIterator[str]:
    """Server-sent events: `chunk(i, delta, finish)` per piece of job i's text, then its end, then [DONE].

    A client that goes away cancels its jobs (they stop at their next token)."""
    events: asyncio.Queue = asyncio.Queue()
    send = _sender(events.put_nowait)
    for i, job in enumerate(jobs):
        job.emit = lambda e, i=i: send((i, e))
        generator.submit(job)
    try:
        if opener:
            yield _sse(chunk(0, None, None))
        left = len(jobs)
        while left:
            i, e = await events.get()
            if "delta" in e:
                yield _sse(chunk(i, e["delta"], None))
            elif "error" in e:
                yield _sse(
                    error_body(e["error"], "server_error" if e["status"] >= 500 else "invalid_request_error")
                )
                left -= 1
            else:
                yield _sse(chunk(i, "", e["done"]))
                left -= 1
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancelled = True


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _errors(app: FastAPI) -> None:
    """Every failure as the API's error object."""

    def reply(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        return JSONResponse(error_body(message, kind, code), status_code=status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return reply(err.status, err.message, code=err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return reply(400, f"invalid request: {describe_validation(err)}")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
        return reply(413, str(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return reply(err.status_code, str(err.detail))

    @app.exception_handler(ClmeditError)
    async def user_error(request: Request, err: ClmeditError) -> JSONResponse:
        return reply(400, f"{type(err).__name__}: {err}; nothing was changed")

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return reply(500, "internal error (see the server log); nothing was changed", "server_error")
