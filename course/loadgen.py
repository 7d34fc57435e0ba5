"""An open-loop load generator for an OpenAI-compatible completions server, and the metrics users feel
(07b_serving).

Taught in 07b_serving ("Load, and the metrics users feel"); its Exercise 1 writes `request_metrics` and
`summarize`, whose reference versions are here.

**Open loop.** Requests are sent at the times of a Poisson process (exponential gaps from a seeded RNG), each
at its scheduled time whether or not the earlier ones have finished, as users arrive at a service. A *closed*
loop of N users (each waits for its answer before sending the next request) slows its sending down exactly
when the server is slow, so the requests that would have waited longest are never sent and the measured
latency looks better than what users get: Gil Tene's *coordinated omission* (the wrk2 load generator's README
explains it). `run` keeps the open loop's schedule and records how late each send was (`Record.sent -
Record.scheduled`), so a client that could not keep up is seen, not hidden; `concurrency=N` turns it into the
closed loop, to show the difference.

**Metrics**, as vLLM's benchmark defines them (`benchmarks/benchmark_serving.py`, `calculate_metrics`, and
`benchmarks/backend_request_func.py`), in seconds, per completed request:
- TTFT, time to first token: the first token's arrival - the request's send time;
- TPOT, time per output token after the first: (last token - first token) / (output tokens - 1); undefined for
  a one-token answer (None here: left out of TPOT's percentiles, and it meets any TPOT objective, as vLLM
  counts it 0 for goodput);
- ITL, inter-token latencies: the gaps between consecutive tokens; their percentiles pool every gap of every
  request.

Over a run: p50 and p99 of each (NumPy's default linear percentile, as vLLM), throughput = output tokens of
the completed requests / the run's span (their first send to their last token), and goodput = completed
requests per second that meet both objectives, TTFT <= slo_ttft and TPOT <= slo_tpot (vLLM's "request
goodput"; DistServe, Zhong et al., OSDI 2024, Section 1, defines per-GPU goodput as the highest request rate
at which a target share of requests, say 90%, meets both). Failed requests (an HTTP error, a dropped stream)
are counted, never measured.

Runs inside Jupyter too: `run` drives the asyncio client in a fresh thread with its own event loop, so a
notebook's running loop is never re-entered.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LoadRun", "Planned", "Record", "poisson_times", "request_metrics", "run", "run_async",
           "summarize", "workload"]


# ---------------------------------------------------------------------------------------------- the workload

@dataclass(frozen=True)
class Planned:
    """One request of a workload: send it `at` seconds after the run starts."""
    rid: int
    at: float
    prompt: str
    max_tokens: int


def poisson_times(n: int, rate: float, seed: int = 0) -> np.ndarray:
    """Send times (s, increasing) of `n` requests arriving as a Poisson process of `rate` requests per second.

    The gaps are exponential with mean 1 / rate. The same seed at another rate gives the same pattern,
    stretched: unit exponential gaps divided by the rate (common random numbers: curves over rates are less
    noisy)."""
    if n < 0 or not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"need n >= 0 and a finite rate > 0, got n={n}, rate={rate}")
    gaps = np.random.default_rng(seed).exponential(1.0, n)
    return np.cumsum(gaps) / rate


def workload(n: int, rate: float, text: str, *, seed: int = 0, prompt_len: tuple[int, int] = (8, 48),
             max_tokens: tuple[int, int] = (8, 32), context: int | None = 128) -> list[Planned]:
    """`n` requests at Poisson times of `rate` per second; prompts are slices of `text` (held-out text).

    Prompt lengths (characters) and max_tokens are drawn uniformly from the inclusive ranges, from `seed`, as
    are the slices' offsets; each prompt starts at a word. With `context`, prompt + max_tokens must fit
    in it."""
    lo_p, hi_p = prompt_len
    lo_m, hi_m = max_tokens
    if not 1 <= lo_p <= hi_p or not 1 <= lo_m <= hi_m:
        raise ValueError(f"need 1 <= low <= high for prompt_len {prompt_len} and max_tokens {max_tokens}")
    if context is not None and hi_p + hi_m > context:
        raise ValueError(f"the longest prompt and answer, {hi_p} + {hi_m}, exceed the context of {context}")
    if len(text) < 2 * hi_p:
        raise ValueError(f"text of {len(text)} characters is too short for prompts of up to {hi_p}")
    times = poisson_times(n, rate, seed)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the prompts do not depend on the rate
    plan = []
    for rid, at in enumerate(times):
        length = int(rng.integers(lo_p, hi_p + 1))
        start = int(rng.integers(0, len(text) - 2 * hi_p))
        space = text.find(" ", start, start + hi_p)
        start = space + 1 if space >= 0 else start
        plan.append(Planned(rid, float(at), text[start:start + length], int(rng.integers(lo_m, hi_m + 1))))
    return plan


# ---------------------------------------------------------------------------------------------- one run

@dataclass
class Record:
    """What the client saw of one request; times in seconds since the run started.

    `scheduled`: when the workload said to send it; `sent`: when it was sent (None if never); `token_times`:
    when each streamed token arrived; `error`: None for a completed request, else why it failed (the HTTP
    status and the server's message, or the transport error: a refused connection, a stream cut
    before its end)."""
    rid: int
    scheduled: float
    prompt_len: int = 0
    max_tokens: int = 0
    sent: float | None = None
    token_times: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    model: str | None = None
    error: str | None = None


@dataclass
class LoadRun:
    """A finished run: one Record per planned request, in rid order; `duration`: start to last answer (s)."""
    records: list[Record]
    duration: float

    @property
    def failed(self) -> int:
        return sum(r.error is not None for r in self.records)

    @property
    def max_late(self) -> float:
        """The latest send relative to its schedule (s): near 0 for an open loop that kept its schedule."""
        late = [r.sent - r.scheduled for r in self.records if r.sent is not None]
        return max(late, default=0.0)


DONE = object()  #: what `stream_event` returns for the stream's last line, ``data: [DONE]``


class StreamError(RuntimeError):
    """The server sent an error event mid-stream (``data: {"error": {...}}``)."""


def stream_event(line: str):
    """One line of an OpenAI-style completion stream (Server-Sent Events): the event's JSON as a dict,
    `DONE` for ``data: [DONE]``, None for a line that carries no data (blank lines, comments). Raises
    `StreamError` with the server's message for an error event; ValueError for data that is not JSON.
    Shared by `run_async` and `course.model_server.stream_completion`."""
    if not line.startswith("data: "):
        return None
    data = line[len("data: "):]
    if data == "[DONE]":
        return DONE
    event = json.loads(data)
    if "error" in event:
        error = event["error"]
        raise StreamError(str(error.get("message", error) if isinstance(error, dict) else error))
    return event


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


async def run_async(url: str, plan: Sequence[Planned], *, model: str = "tinylm", temperature: float = 0.0,
                    timeout_s: float = 60.0, concurrency: int | None = None) -> LoadRun:
    """Send every planned request to `url` + /v1/completions (streamed) at its time; see `run`."""
    import httpx  # only a run needs it

    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (or None for an open loop), got {concurrency}")
    endpoint = url.rstrip("/") + "/v1/completions"
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, trust_env=False) as client:
        start = time.perf_counter()

        async def send(p: Planned, record: Record) -> None:
            body = {"model": model, "prompt": p.prompt, "max_tokens": p.max_tokens,
                    "temperature": temperature, "seed": p.rid, "stream": True}
            record.sent = time.perf_counter() - start
            async with client.stream("POST", endpoint, json=body) as response:
                if response.status_code != 200:
                    record.error = f"HTTP {response.status_code}: {_message(await response.aread())}"
                    return
                async for line in response.aiter_lines():
                    try:
                        chunk = stream_event(line)
                    except StreamError as err:  # the server failed mid-stream and said so
                        record.error = f"error event: {err}"
                        return
                    if chunk is DONE:
                        return
                    if chunk is None:
                        continue
                    arrived = time.perf_counter() - start
                    choice = chunk["choices"][0]
                    if choice.get("text"):  # a token (a closing event with a stop reason may carry none)
                        record.token_times.append(arrived)
                        record.text += choice["text"]
                    record.finish_reason = choice.get("finish_reason") or record.finish_reason
                    record.model = chunk.get("model", record.model)
            record.error = "the stream ended before data: [DONE] (the server closed it)"

        async def one(p: Planned) -> Record:
            record = Record(p.rid, p.at, len(p.prompt), p.max_tokens)
            delay = start + p.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if gate is None:
                    await send(p, record)
                else:
                    async with gate:
                        await send(p, record)
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:  # counted
                record.error = f"{type(err).__name__}: {err}".strip()
            return record

        records = await asyncio.gather(*(one(p) for p in plan))
        return LoadRun(list(records), time.perf_counter() - start)


def run(url: str, plan: Sequence[Planned], **options) -> LoadRun:
    """Send `plan` to the server at `url` (an open loop; `concurrency=N`: at most N in flight, a closed loop).

    Blocks until every request has finished or failed, and returns a `LoadRun`. Works from plain Python and
    from a notebook (whose event loop is already running): the client runs in a fresh thread with
    `asyncio.run`.
    Options: model ("tinylm"), temperature (0), timeout_s (60, per request), concurrency (None)."""
    result: dict = {}

    def main() -> None:
        try:
            result["run"] = asyncio.run(run_async(url, plan, **options))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = err

    thread = threading.Thread(target=main, name="loadgen", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["run"]


# ---------------------------------------------------------------------------------------------- metrics

def request_metrics(sent: float, token_times: Sequence[float]) -> tuple[float, float | None, list[float]]:
    """(TTFT, TPOT, ITL gaps) of one completed request, in seconds (the reference for Exercise 1).

    TPOT is None for a one-token answer. Raises ValueError for no tokens, or times out of order (a token
    before the send, or before the previous token)."""
    times = [float(t) for t in token_times]
    if not times:
        raise ValueError("a completed request has at least one token; got none")
    if times[0] < sent or any(b < a for a, b in zip(times, times[1:])):
        raise ValueError(f"token times must follow the send time ({sent}) in order, got {times[:6]}...")
    gaps = [b - a for a, b in zip(times, times[1:])]
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
    return times[0] - sent, tpot, gaps


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def summarize(records: Iterable, slo_ttft: float, slo_tpot: float) -> dict[str, float]:
    """p50/p99 of TTFT, TPOT and ITL (s), throughput (tokens/s), goodput (requests/s), completed and failed.

    `records` have `.sent`, `.token_times` and `.error` (Records of a run). Failed ones (error not None) are
    only counted. The run's span runs from the first send to the last token of the completed requests. Raises
    ValueError for a negative objective or when no request completed; nan for a percentile of no values."""
    if slo_ttft < 0 or slo_tpot < 0:
        raise ValueError(f"latency objectives must be >= 0 s, got TTFT {slo_ttft}, TPOT {slo_tpot}")
    records = list(records)
    done = [r for r in records if r.error is None]
    if not done:
        raise ValueError(f"no completed request among {len(records)}: nothing to summarize")
    ttfts, tpots, itls, good, tokens = [], [], [], 0, 0
    for r in done:
        ttft, tpot, gaps = request_metrics(r.sent, r.token_times)
        ttfts.append(ttft)
        itls += gaps
        tokens += len(r.token_times)
        if tpot is not None:
            tpots.append(tpot)
        good += ttft <= slo_ttft and (tpot is None or tpot <= slo_tpot)
    span = max(r.token_times[-1] for r in done) - min(r.sent for r in done)
    if not span > 0:
        raise ValueError(f"the run has no duration (first send to last token: {span} s)")
    out = {"completed": len(done), "failed": len(records) - len(done), "throughput": tokens / span,
           "goodput": good / span}
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls)):
        out[f"{name}_p50"], out[f"{name}_p99"] = _percentiles(values)
    return out
