"""TinyLM behind HTTP: an OpenAI-compatible completions server with model versions, routing and a rollback
(07b_serving).

The server speaks the wire format clients already use (OpenAI's legacy completions API,
https://platform.openai.com/docs/api-reference/completions):

- ``POST /v1/completions`` with JSON ``{model, prompt, max_tokens=16, temperature=0, seed, n=1, stop,
  stream=false}``. Not streamed, it answers ``{id, object: "text_completion", created, model, choices:
  [{index, text, finish_reason}], usage: {prompt_tokens, completion_tokens, total_tokens}}``. Streamed, it
  sends Server-Sent Events: one ``data: {json}`` per token whose ``choices[0].text`` is that token's text
  (``finish_reason`` null until the last, then "length" or "stop"), then ``data: [DONE]``. ``stop`` (single
  characters here, since a token is a character) ends a completion with "stop"; as in OpenAI's API the stop
  text is not returned. Errors are HTTP 400 (404 for an unknown model) with
  ``{"error": {"message", "type"}}``.
- ``GET /v1/models``, ``GET /health``.
- Admin routes, the job TensorFlow Serving does for versions: ``POST /admin/routes {"v1": 0.9, "v2": 0.1}``
  (traffic weights; a request for "tinylm" goes to a version drawn by weight from a seeded RNG, "tinylm@v2"
  pins one; ``?seed=N`` restarts the routing RNG), ``POST /admin/rollback`` (back to the previous weights in
  one step; requests in flight finish on the version they started on), ``POST /admin/engine {"policy",
  "batch_window_s", "max_batch", ...}`` (rebuild every version's engine with new settings; 409 while any
  request is in flight), ``GET /admin/stats`` (per version: requests, tokens, failures, the engine's stats),
  ``POST /admin/reset`` (zero the counters).

Each version has its own `course.engine.Engine` (continuous batching over a paged KV cache) stepped by a
background thread; the thread hands each token to its request's asyncio queue with
``loop.call_soon_threadsafe``. A client that disconnects mid-stream is aborted in the engine (its blocks
freed).

Versions: "v1" is the course's TinyLM; "v2" is the same network with its Linear weights stored in int8
(one scale per output row, dequantized on the fly: weight-only quantization, 01_edge's scheme), a second
release with a smaller file and slightly different numbers.

Run it with ``python -m course.model_server --port 8000 --versions v1,v2``; from a notebook or a test use
`ModelServer`, which starts that command with `course.processes.start` and stops it with
`course.processes.stop_tree`.
"""

import argparse
import asyncio
import atexit
import contextlib
import copy
import itertools
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "tinylm"
VERSIONS = ("v1", "v2")
ENGINE_OPTIONS = ("policy", "batch_window_s", "max_batch", "n_blocks", "block_size", "max_step_tokens",
                  "prefix_caching", "preemption")


# ---------------------------------------------------------------------------------------------- versions


def int8_linear(linear):
    """A copy of `linear` whose weight is stored in int8 with one float scale per output row (symmetric:
    scale = max |w| of the row / 127: `course.kv_quant.quantize`, each row being one vector), dequantized on the
    fly in each forward. The stored weight is 4x smaller than float32; activations stay in float32
    (weight-only quantization)."""
    import torch.nn.functional as F
    from torch import nn

    from course.kv_quant import dequantize, quantize

    class Int8Linear(nn.Module):
        def __init__(self, linear: nn.Linear):
            super().__init__()
            weight_int8, scale = quantize(linear.weight.detach())  # (out, in) int8, (out, 1) float32
            self.register_buffer("weight_int8", weight_int8)
            self.register_buffer("scale", scale)
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x):
            return F.linear(x, dequantize(self.weight_int8, self.scale).to(x.dtype), self.bias)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight per row"

    return Int8Linear(linear)


def load_version(name: str, base=None):
    """The TinyLM of release `name`. "v1": the course's checkpoint in float32. "v2": the same network with
    every Linear weight stored in int8, one scale per output row (`int8_linear`): a second release with a
    smaller file and slightly different numbers. `base` is a loaded v1 model to copy from (else the checkpoint
    is loaded); it is not changed. Returns a model in eval mode on the CPU."""
    from torch import nn

    from course import lm

    if name not in VERSIONS:
        raise ValueError(f"unknown version {name!r}: this course ships {', '.join(VERSIONS)}")
    model = base if base is not None else lm.load_model()[0]
    if name == "v1":
        return model
    quantized = copy.deepcopy(model).eval()
    for parent in list(quantized.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, int8_linear(child))
    return quantized


# ------------------------------------------------------------------------------------------------ errors


class APIError(Exception):
    """An error the client caused: answered with `status` and OpenAI's error body."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.kind = message, status, kind


def error_body(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind}}


# ----------------------------------------------------------------------------------------------- routing


class Router:
    """Traffic weights per version, a seeded draw per request, and the history a rollback returns to."""

    def __init__(self, versions: Iterable[str], weights: dict[str, float] | None = None, seed: int = 0):
        self.versions = list(versions)
        self.rng = random.Random(seed)
        self.weights = self._check(weights or {self.versions[0]: 1.0})
        self.history: list[dict[str, float]] = []

    def _check(self, weights: dict[str, float]) -> dict[str, float]:
        if not isinstance(weights, dict) or not weights:
            raise APIError("routes must be a JSON object of version: weight, e.g. {\"v1\": 0.9, \"v2\": 0.1}")
        unknown = sorted(set(weights) - set(self.versions))
        if unknown:
            raise APIError(f"unknown version(s) {unknown}: this server runs {self.versions}")
        for version, weight in weights.items():
            number = isinstance(weight, int | float) and not isinstance(weight, bool)
            if not number or not 0 <= weight < float("inf"):
                raise APIError(f"the weight of {version} must be a finite number >= 0, got {weight!r}")
        total = sum(weights.values())
        if total <= 0:
            raise APIError("at least one version needs a weight above 0")
        return {v: weights[v] / total for v in self.versions if weights.get(v, 0) > 0}

    def set(self, weights: dict[str, float], seed: int | None = None) -> dict[str, float]:
        """New weights (normalised to sum 1); the old ones go on the rollback history. `seed` restarts the
        routing RNG, so that the versions the next requests get do not depend on how many came before."""
        new = self._check(weights)
        self.history.append(self.weights)
        self.weights = new
        if seed is not None:
            self.rng.seed(seed)
        return new

    def rollback(self) -> dict[str, float]:
        if not self.history:
            raise APIError("nothing to roll back to: the routes were never changed", status=409)
        self.weights = self.history.pop()
        return self.weights

    def pick(self, model: str) -> str:
        if model == MODEL_NAME:
            versions = list(self.weights)
            return self.rng.choices(versions, weights=[self.weights[v] for v in versions])[0]
        name, _, version = model.partition("@")
        if name == MODEL_NAME and version in self.versions:
            return version
        raise APIError(f"the model {model!r} does not exist; this server has {MODEL_NAME!r} (routed by "
                       f"weight) and {', '.join(f'{MODEL_NAME}@{v}' for v in self.versions)}", status=404)


# ------------------------------------------------------------------------------------------------ engines


@dataclass
class _Request:
    queue: asyncio.Queue  # (choice index, Output) per token, or the exception that failed the step
    n: int


class VersionWorker:
    """One version's engine and the thread that steps it while it has work.

    `submit`, `release` and `reconfigure` are called from the event loop; they take the same lock as the
    stepping thread, so the engine is only ever touched by one thread at a time. Each Output goes to its request's queue through
    ``loop.call_soon_threadsafe``; an exception in a step fails every request in flight (the queue gets
    it)."""

    def __init__(self, name: str, model, options: dict, loop: asyncio.AbstractEventLoop):
        self.name, self.model, self.loop = name, model, loop
        self.options = dict(options)
        self.engine = self._build(self.options)
        self.cond = threading.Condition()
        self.requests: dict[str, _Request] = {}
        self.counts = self._zero()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self.thread.start()

    @staticmethod
    def _zero() -> dict:
        return {"requests": 0, "completed": 0, "aborted": 0, "failed": 0, "prompt_tokens": 0,
                "completion_tokens": 0}

    def _build(self, options: dict):
        from course.engine import Engine

        return Engine(self.model, **{k: v for k, v in options.items() if v is not None})

    @property
    def busy(self) -> bool:
        with self.cond:
            return bool(self.requests) or self.engine.has_work()

    def reconfigure(self, changes: dict) -> None:
        options = {**self.options, **changes}
        with self.cond:
            if self.requests or self.engine.has_work():
                raise APIError(f"version {self.name} is serving requests: reconfigure when idle", status=409)
            try:
                engine = self._build(options)
            except (TypeError, ValueError) as error:
                raise APIError(f"bad engine settings {changes}: {error}") from error
            self.engine, self.options = engine, options

    def submit(self, rid: str, prompt_ids: list[int], max_tokens: int, temperature: float, seed: int,
               n: int = 1, stop: list[int] = ()) -> asyncio.Queue:
        request = _Request(asyncio.Queue(), n)
        with self.cond:
            try:
                self.engine.add_request(rid, prompt_ids, max_tokens, temperature=temperature, seed=seed, n=n,
                                        **({"stop": stop} if stop else {}))
            except ValueError as error:
                raise APIError(str(error)) from error
            self.requests[rid] = request
            self.counts["requests"] += 1
            self.counts["prompt_tokens"] += len(prompt_ids)
            self.cond.notify()
        return request.queue

    def release(self, rid: str, completed: bool) -> None:
        """The request is over: finished (completed) or given up by its client (aborted in the engine)."""
        with self.cond:
            if self.requests.pop(rid, None) is None:
                return
            if completed:
                self.counts["completed"] += 1
            else:
                with contextlib.suppress(KeyError, ValueError):  # it may have finished meanwhile
                    self.engine.abort(rid)
                self.counts["aborted"] += 1

    def _deliver(self, outputs) -> None:
        for out in outputs:
            rid, _, index = str(out.rid).partition("/")
            request = self.requests.get(rid)
            if request is None:
                continue  # aborted while the step ran
            self.counts["completion_tokens"] += 1
            self.loop.call_soon_threadsafe(request.queue.put_nowait, (int(index or 0), out))

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.engine.has_work():
                    self.cond.wait()
                if self.stopping:
                    return
                try:
                    outputs = self.engine.step()
                except Exception as error:  # a bug or a full cache: fail the requests, keep serving
                    failed, self.requests = self.requests, {}
                    self.counts["failed"] += len(failed)
                    for rid in failed:
                        with contextlib.suppress(Exception):
                            self.engine.abort(rid)
                    for request in failed.values():
                        self.loop.call_soon_threadsafe(request.queue.put_nowait, error)
                    continue
                self._deliver(outputs)
                trace = getattr(self.engine, "trace", None)
                if isinstance(trace, list) and len(trace) > 20_000:  # a long-lived server keeps recent steps
                    del trace[:-2_000]
            # let the event loop's thread have the GIL between steps, to send the tokens just made; and when a
            # static batch waits for its window, let submit() in
            time.sleep(0 if outputs else 0.0005)

    def stats(self) -> dict:
        with self.cond:
            engine_stats = {k: v for k, v in dict(getattr(self.engine, "stats", {})).items()
                            if isinstance(v, int | float | str | bool | None)}
            blocks = getattr(self.engine, "blocks", None)
            free = getattr(blocks, "free_blocks", None)
            return {**self.counts, "in_flight": len(self.requests), "free_blocks": free,
                    "options": dict(self.options), "engine": engine_stats}

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------------- app


def create_app(versions: Iterable[str] = ("v1",), *, routes: dict[str, float] | None = None, seed: int = 0,
               engine_options: dict | None = None, models: dict | None = None):
    """The FastAPI app. `versions`: which releases to serve (see `load_version`); `routes`: initial traffic
    weights (default: all to the first version); `seed`: the routing RNG's seed; `engine_options`: keyword
    arguments for every version's `course.engine.Engine` (names in ENGINE_OPTIONS); `models`: already loaded
    models by version (tests), else they are loaded at startup."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    from course import lm

    versions = list(versions)
    if not versions or len(set(versions)) != len(versions):
        raise ValueError(f"versions must be distinct and at least one, got {versions}")
    unknown = sorted(set(versions) - set(VERSIONS) - set(models or {}))
    if unknown:
        raise ValueError(f"unknown version(s) {unknown}: this course ships {', '.join(VERSIONS)}")
    engine_options = dict(engine_options or {})
    bad = sorted(set(engine_options) - set(ENGINE_OPTIONS))
    if bad:
        raise ValueError(f"unknown engine option(s) {bad}; known: {ENGINE_OPTIONS}")
    state: dict = {}
    counter = itertools.count()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        base, tokenizer, _ = lm.load_model()
        loaded = dict(models or {})
        for name in versions:
            loaded.setdefault(name, load_version(name, base))
        state["tokenizer"], state["context"] = tokenizer, base.config.context
        state["router"] = Router(versions, routes, seed)
        state["workers"] = {name: VersionWorker(name, loaded[name], engine_options, loop)
                            for name in versions}
        state["created"] = int(time.time())
        yield
        for worker in state["workers"].values():
            worker.stop()

    app = FastAPI(title="TinyLM server (07b_serving)", lifespan=lifespan)

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        prompt: str
        max_tokens: int = Field(16, ge=1)
        temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False)
        seed: int | None = None
        n: int = Field(1, ge=1, le=16)
        stream: bool = False
        stop: str | list[str] | None = None

    @app.exception_handler(APIError)
    async def api_error(_request, error: APIError):
        return JSONResponse(error_body(error.message, error.kind), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                             for e in error.errors())
        return JSONResponse(error_body(f"invalid request: {problems}"), status_code=400)

    @app.get("/health")
    async def health():
        return {"status": "ok", "versions": versions}

    @app.get("/v1/models")
    async def list_models():
        names = [MODEL_NAME] + [f"{MODEL_NAME}@{v}" for v in versions]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": state["created"],
                                            "owned_by": "course"} for name in names],
                "routes": state["router"].weights}

    def prepare(body: CompletionRequest) -> tuple[str, list[int], list[int]]:
        version = state["router"].pick(body.model)
        if not body.prompt:
            raise APIError("the prompt is empty: give at least one character")
        try:
            prompt_ids = state["tokenizer"].encode(body.prompt)
        except ValueError as error:
            raise APIError(str(error)) from error
        wanted = len(prompt_ids) + body.max_tokens
        if wanted > state["context"]:
            raise APIError(f"This model's maximum context length is {state['context']} tokens. However, you "
                           f"requested {wanted} tokens ({len(prompt_ids)} in the prompt, {body.max_tokens} "
                           "for the completion). Please reduce the prompt or max_tokens.")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(len(stop) != 1 for stop in stops):
            raise APIError(f"stop: this server stops on single characters (its tokens), got {stops}")
        try:
            stop_ids = state["tokenizer"].encode("".join(stops))
        except ValueError as error:
            raise APIError(f"stop: {error}") from error
        return version, prompt_ids, stop_ids

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        version, prompt_ids, stop_ids = prepare(body)
        worker: VersionWorker = state["workers"][version]
        number = next(counter)
        rid = f"cmpl-{number}-{uuid.uuid4().hex[:8]}"
        seed = body.seed if body.seed is not None else number
        queue = worker.submit(rid, prompt_ids, body.max_tokens, body.temperature, seed, body.n, stop_ids)
        head = {"id": rid, "object": "text_completion", "created": int(time.time()),
                "model": f"{MODEL_NAME}@{version}"}
        decode = state["tokenizer"].decode

        async def tokens():
            """(choice index, Output) until every choice has finished; raises what the engine raised."""
            done = 0
            while done < body.n:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                index, out = item
                done += bool(out.finished)
                yield index, out

        if not body.stream:
            texts, reasons = [[] for _ in range(body.n)], [None] * body.n
            completed, n_tokens = False, 0
            try:
                async for index, out in tokens():
                    n_tokens += 1
                    if out.finish_reason != "stop":  # as OpenAI: the stop sequence is not returned
                        texts[index].append(out.token)
                    reasons[index] = out.finish_reason if out.finished else None
                completed = True
            except Exception as error:
                raise APIError(f"the engine failed: {error!r}", status=500, kind="server_error") from error
            finally:
                worker.release(rid, completed)
            n_out = n_tokens
            return {**head, "choices": [{"index": i, "text": decode(t), "finish_reason": reasons[i],
                                         "logprobs": None} for i, t in enumerate(texts)],
                    "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n_out,
                              "total_tokens": len(prompt_ids) + n_out}}

        async def events():
            try:
                async for index, out in tokens():
                    text = "" if out.finish_reason == "stop" else decode([out.token])
                    choice = {"index": index, "text": text, "logprobs": None,
                              "finish_reason": out.finish_reason if out.finished else None}
                    yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
            except Exception as error:
                yield f"data: {json.dumps(error_body(f'the engine failed: {error!r}', 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"

        return _Stream(events(), on_close=lambda finished: worker.release(rid, finished))

    @app.post("/admin/routes")
    async def set_routes(weights: dict, seed: int | None = None):
        router: Router = state["router"]
        return {"routes": router.set(weights, seed), "previous": router.history[-1]}

    @app.post("/admin/rollback")
    async def rollback():
        return {"routes": state["router"].rollback()}

    @app.post("/admin/engine")
    async def reconfigure(changes: dict):
        bad = sorted(set(changes) - set(ENGINE_OPTIONS))
        if bad:
            raise APIError(f"unknown engine option(s) {bad}; known: {list(ENGINE_OPTIONS)}")
        workers = state["workers"].values()
        busy = [w.name for w in workers if w.busy]
        if busy:
            raise APIError(f"version(s) {busy} are serving requests: reconfigure when idle", status=409)
        for worker in workers:
            worker.reconfigure(changes)
        return {"options": {w.name: w.options for w in workers}}

    @app.get("/admin/stats")
    async def stats():
        workers = state["workers"].items()
        return {"routes": state["router"].weights, "versions": {n: w.stats() for n, w in workers}}

    @app.post("/admin/reset")
    async def reset():
        for worker in state["workers"].values():
            with worker.cond:
                worker.counts = worker._zero()
        return {"reset": True}

    return app


def _stream_response_class():
    from starlette.responses import StreamingResponse

    class Stream(StreamingResponse):
        """Server-Sent Events that tell `on_close(finished)` how the stream ended, however it ended: sent
        to the last event, or cut short by a client that went away (the request is then aborted)."""

        media_type = "text/event-stream"

        def __init__(self, content, on_close):
            super().__init__(content, headers={"Cache-Control": "no-cache"})
            self.on_close, self.finished = on_close, False

        async def stream_response(self, send) -> None:
            await super().stream_response(send)
            self.finished = True

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                with contextlib.suppress(Exception):
                    await self.body_iterator.aclose()
                self.on_close(self.finished)

    return Stream


class _LazyStream:
    """Defers importing starlette until a stream is answered (keeps `import course.model_server` light)."""

    cls = None

    def __call__(self, *args, **kwargs):
        if _LazyStream.cls is None:
            _LazyStream.cls = _stream_response_class()
        return _LazyStream.cls(*args, **kwargs)


_Stream = _LazyStream()


# ------------------------------------------------------------------------------------------- a client


def stream_completion(url: str, prompt: str, max_tokens: int = 16, *, model: str = "tinylm", client=None,
                      on_token=None, **fields) -> dict:
    """Send one streamed completion to the server at `url` and time it on this side (`time.perf_counter`).

    Returns {"model": the version that served it ("tinylm@v1"), "text", "finish_reason", "sent": the time the
    request left, "times": the arrival time of each token's event}. `on_token(model, n_tokens_so_far)` is
    called as each event arrives. Raises RuntimeError with the server's message for an HTTP error or an error
    event. `client`: an `httpx.Client` to reuse (one is made otherwise); `fields`: more request fields
    (temperature, seed, stop...)."""
    import httpx

    from course.loadgen import DONE, StreamError, stream_event

    own = client is None
    client = client or httpx.Client(timeout=60, trust_env=False)  # localhost: never through a proxy
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, **fields}
    out = {"model": None, "text": "", "finish_reason": None, "times": []}
    try:
        out["sent"] = time.perf_counter()
        with client.stream("POST", url.rstrip("/") + "/v1/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"HTTP {response.status_code}: {response.json()['error']['message']}")
            for line in response.iter_lines():
                try:
                    event = stream_event(line)
                except StreamError as err:
                    raise RuntimeError(f"the server failed mid-stream: {err}") from None
                if event is DONE:
                    break
                if event is None:
                    continue
                out["times"].append(time.perf_counter())
                choice = event["choices"][0]
                out["model"], out["text"] = event["model"], out["text"] + choice["text"]
                out["finish_reason"] = choice["finish_reason"]
                if on_token is not None:
                    on_token(out["model"], len(out["times"]))
    finally:
        if own:
            client.close()
    return out


# ------------------------------------------------------------------------------------------ the process


def _parse_routes(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    routes = {}
    for part in text.split(","):
        version, _, weight = part.partition("=")
        routes[version.strip()] = float(weight)
    return routes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course.model_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--versions", default="v1", help="comma-separated releases to serve, e.g. v1,v2")
    parser.add_argument("--routes", default=None, help="initial traffic weights, e.g. v1=0.9,v2=0.1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the routing RNG")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (intra-op) for the engines")
    parser.add_argument("--policy", choices=("continuous", "static"), default=None)
    parser.add_argument("--batch-window-s", type=float, default=None)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--n-blocks", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--max-step-tokens", type=int, default=None)
    parser.add_argument("--prefix-caching", action="store_true", default=None)
    args = parser.parse_args(argv)

    import torch
    import uvicorn

    torch.set_num_threads(max(1, args.threads))
    sys.setswitchinterval(0.001)  # the engine thread and the event loop share the GIL: hand it over often
    options = {name: getattr(args, name) for name in ENGINE_OPTIONS if getattr(args, name, None) is not None}
    app = create_app(args.versions.split(","), routes=_parse_routes(args.routes), seed=args.seed,
                     engine_options=options)
    class AnnouncingServer(uvicorn.Server):  # one line once it listens: a terminal user sees where and how to stop
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(f"course.model_server: serving tinylm versions {args.versions} at http://{args.host}:{args.port} "
                      "(POST /v1/completions; Ctrl-C stops it)", flush=True)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", workers=1,
                            timeout_graceful_shutdown=2)
    try:
        AnnouncingServer(config).run()
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down already; no traceback (as uvicorn.run does)
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _remove_stale_logs() -> list[Path]:
    """Delete the logs of servers whose starting process has died: a killed kernel runs no atexit, so its
    server's log would stay in the temp folder. A log names its starter as `_pid<N>_`; returns what was removed."""
    import psutil

    removed = []
    for path in Path(tempfile.gettempdir()).glob("model_server_*_pid*_*.log"):
        owner = path.name.split("_pid", 1)[1].split("_", 1)[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:  # another user's file, or gone already
                pass
    return removed


class ModelServer:
    """The model server as a separate process, for notebooks and tests.

    ``with ModelServer(versions=("v1", "v2")) as server: httpx.post(server.url + "/v1/completions", ...)``, or
    ``server = ModelServer().start()`` ... ``server.stop()``. Options are the command line's (``policy``,
    ``max_batch``, ``batch_window_s``, ``n_blocks``, ``routes`` as a dict, ``threads``, ``seed``...).

    Started with `course.processes.start` (a session of its own, so Ctrl-C in a notebook does not reach it;
    killed by Linux when the starting thread's process dies: start it from the main thread), stopped with
    `course.processes.stop_tree` when the context exits, on `stop()`, or at interpreter exit (atexit).
    `start` waits for ``GET /health``; if the process exits or does not answer within `start_timeout_s`
    seconds it raises RuntimeError with the tail of the server's log (`log_path`)."""

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1", versions: Iterable[str] = ("v1",),
                 routes: dict[str, float] | None = None, start_timeout_s: float = 60.0, **options):
        self.host, self.port = host, port
        self.versions = list(versions)
        self.routes, self.options, self.start_timeout_s = routes, options, start_timeout_s
        self.process = None
        self.log_path: Path | None = None
        self.start_s: float | None = None

    @property
    def url(self) -> str:
        if self.process is None:
            raise RuntimeError("the server is not running: call start() or use `with ModelServer(...)`")
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "course.model_server", "--host", self.host, "--port", str(self.port),
                   "--versions", ",".join(self.versions)]
        if self.routes:
            command += ["--routes", ",".join(f"{v}={w}" for v, w in self.routes.items())]
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                command.append(flag)
            elif value is not None and value is not False:
                command += [flag, str(value)]
        return command

    def start(self) -> "ModelServer":
        from course import processes

        if self.process is not None:
            return self
        from course.devices import on_cpu

        on_cpu("the model server process serves TinyLM on the CPU (lm.load_model's default device)")
        self.port = self.port or free_port(self.host)
        _remove_stale_logs()
        handle, name = tempfile.mkstemp(prefix=f"model_server_{self.port}_pid{os.getpid()}_", suffix=".log")
        self.log_path = Path(name)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # the folder holding this `course` package
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("PYTHONUNBUFFERED", "1")
        started = time.perf_counter()
        with os.fdopen(handle, "w") as log:
            self.process = processes.start(self.command(), env=env, stdout=log, stderr=log)
        atexit.register(self.stop)
        try:
            self._wait_for_health(started + self.start_timeout_s)
        except BaseException:  # a failed start, or Ctrl-C while waiting: leave nothing running
            self.stop(keep_log=True)
            raise
        self.start_s = time.perf_counter() - started
        return self

    def _wait_for_health(self, deadline: float) -> None:
        import httpx

        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the model server exited with code {self.process.returncode} before "
                                   f"answering; the end of its log ({self.log_path}):\n{self.log_tail()}")
            try:
                health = httpx.get(f"http://{self.host}:{self.port}/health", timeout=1.0, trust_env=False)
                if health.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the model server did not answer /health within "
                                   f"{self.start_timeout_s:.0f} s; the end of its log ({self.log_path}):\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, keep_log: bool = False) -> list[int]:
        """Stop the server and everything it started; returns the pids that needed SIGKILL. Safe to repeat.
        The log file is removed unless `keep_log`."""
        from course import processes

        if self.process is None:
            return []
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        killed = processes.stop_tree(process, grace_s=5.0)
        if not keep_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        return killed

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"at http://{self.host}:{self.port} (pid {self.pid})" if self.process else "stopped"
        return f"ModelServer({','.join(self.versions)}) {where}"


if __name__ == "__main__":
    main()
