"""course.loadgen: Poisson arrivals, an open loop that keeps its schedule, errors counted, metrics by hand."""

import asyncio
import json
import math
import socket
import threading
import time

import numpy as np
import pytest

from course import loadgen


# ------------------------------------------------------------------------------------------ a scripted server

def scripted_app(token_gap_s: float = 0.01):
    """An OpenAI-style streaming completions route whose answers are scripted by the prompt:
    "fail" -> HTTP 400, "drop" -> the stream is cut after two tokens, "error event" -> an error event after
    one token, anything else -> max_tokens tokens `token_gap_s` apart (a slow server when the gap is long)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: dict):
        if body["prompt"] == "fail":
            error = {"message": "scripted failure", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, 400)

        async def events():
            for i in range(body["max_tokens"]):
                await asyncio.sleep(token_gap_s)
                if body["prompt"] == "drop" and i == 2:
                    raise RuntimeError("scripted disconnect")
                if body["prompt"] == "error event" and i == 1:
                    error = {"error": {"message": "scripted", "type": "server_error"}}
                    yield f"data: {json.dumps(error)}\n\n"
                    return
                last = i == body["max_tokens"] - 1
                chunk = {"model": "scripted", "choices": [{"index": 0, "text": "ab"[i % 2],
                                                           "finish_reason": "length" if last else None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class ThreadServer:
    """uvicorn serving `app` on a free localhost port in a thread of this process (tests only)."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the scripted server did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def slow_url():
    with ThreadServer(scripted_app(token_gap_s=0.1)) as url:
        yield url


# ---------------------------------------------------------------------------------------------- arrivals

def test_arrivals_are_poisson_at_the_given_rate_and_seeded():
    times = loadgen.poisson_times(20_000, rate=50.0, seed=3)
    gaps = np.diff(np.concatenate([[0.0], times]))
    assert np.all(gaps > 0)
    assert abs(gaps.mean() - 1 / 50) < 0.02 * (1 / 50)          # mean gap 1/rate
    assert abs(gaps.std() / gaps.mean() - 1) < 0.03             # exponential: std = mean
    counts = np.bincount((times // 1.0).astype(int))[:-1]       # arrivals per second: Poisson(50)
    assert abs(counts.mean() - 50) < 1.5 and abs(counts.var() / counts.mean() - 1) < 0.25
    assert np.array_equal(times, loadgen.poisson_times(20_000, 50.0, seed=3))
    assert not np.array_equal(times, loadgen.poisson_times(20_000, 50.0, seed=4))
    stretched = 2 * loadgen.poisson_times(10, 10.0, seed=1)
    np.testing.assert_allclose(loadgen.poisson_times(10, 5.0, seed=1), stretched)
    with pytest.raises(ValueError):
        loadgen.poisson_times(5, 0.0)


def test_the_workload_draws_prompts_from_the_text_and_fits_the_context():
    text = " ".join(f"word{i}" for i in range(2000))
    plan = loadgen.workload(50, 10.0, text, seed=2, prompt_len=(10, 40), max_tokens=(5, 20))
    assert [p.rid for p in plan] == list(range(50))
    assert all(p.prompt in text and 10 <= len(p.prompt) <= 40 and 5 <= p.max_tokens <= 20 for p in plan)
    assert len({p.prompt for p in plan}) > 40
    again = loadgen.workload(50, 20.0, text, seed=2, prompt_len=(10, 40), max_tokens=(5, 20))
    assert [(p.prompt, p.max_tokens) for p in again] == [(p.prompt, p.max_tokens) for p in plan]
    with pytest.raises(ValueError, match="context"):
        loadgen.workload(5, 1.0, text, prompt_len=(10, 100), max_tokens=(5, 40), context=128)


# ---------------------------------------------------------------------------------------------- runs

def test_an_open_loop_sends_on_schedule_however_slow_the_server(slow_url):
    # 20 requests 20 ms apart, each taking 0.5 s (5 tokens 0.1 s apart): most run at once.
    plan = [loadgen.Planned(i, 0.02 * i, f"prompt {i}", 5) for i in range(20)]
    run = loadgen.run(slow_url, plan)
    assert run.failed == 0 and [r.rid for r in run.records] == list(range(20))
    assert run.max_late < 0.1, f"an open loop must not wait for answers: a send was {run.max_late:.3f} s late"
    assert all(len(r.token_times) == 5 and r.finish_reason == "length" for r in run.records)
    assert {r.text for r in run.records} == {"ababa"}
    assert 0.4 < run.duration < 2.0
    # A closed loop of 2 users cannot keep that schedule: it sends only when an answer is back.
    closed = loadgen.run(slow_url, plan[:6], concurrency=2)
    assert closed.failed == 0 and closed.max_late > 0.5


def test_errors_and_disconnects_are_counted_never_raised(slow_url):
    plan = [loadgen.Planned(0, 0.0, "fine", 3), loadgen.Planned(1, 0.0, "fail", 3),
            loadgen.Planned(2, 0.01, "drop", 6), loadgen.Planned(3, 0.0, "error event", 4)]
    records = loadgen.run(slow_url, plan).records
    assert records[3].error == "error event: scripted" and len(records[3].token_times) == 1
    assert records[0].error is None and len(records[0].token_times) == 3
    assert records[1].error.startswith("HTTP 400") and "scripted failure" in records[1].error
    assert records[2].error is not None and len(records[2].token_times) == 2
    refused = loadgen.run("http://127.0.0.1:9", [loadgen.Planned(0, 0.0, "x", 2)])  # nothing listens there
    assert refused.failed == 1 and refused.records[0].error.startswith("ConnectError")


def test_run_works_inside_a_running_event_loop(slow_url):
    async def notebook_cell():  # a Jupyter kernel runs cells inside an event loop
        return loadgen.run(slow_url, [loadgen.Planned(0, 0.0, "hi", 2)])

    assert asyncio.run(notebook_cell()).records[0].error is None


# ---------------------------------------------------------------------------------------------- metrics

def test_request_metrics_by_hand():
    ttft, tpot, gaps = loadgen.request_metrics(1.0, [1.5, 1.6, 1.8, 2.1])
    assert math.isclose(ttft, 0.5) and math.isclose(tpot, 0.6 / 3)
    np.testing.assert_allclose(gaps, [0.1, 0.2, 0.3])
    assert loadgen.request_metrics(0.0, [0.25]) == (0.25, None, [])
    for bad in ([], [0.5, 0.4], [-0.1]):
        with pytest.raises(ValueError):
            loadgen.request_metrics(0.0, bad)


def test_summarize_by_hand():
    R = loadgen.Record
    records = [R(0, 0.0, sent=0.0, token_times=[0.2, 0.3, 0.4]),          # TTFT 0.2, TPOT 0.1
               R(1, 0.5, sent=0.5, token_times=[1.5, 1.6]),               # TTFT 1.0: misses a 0.5 s TTFT
               R(2, 1.0, sent=1.0, token_times=[1.1, 1.5, 1.9]),          # TPOT 0.4: misses a 0.2 s TPOT
               R(3, 1.2, sent=1.2, token_times=[1.3]),                    # one token: meets any TPOT
               R(4, 1.3, sent=1.3, error="HTTP 400: no")]                 # failed: counted only
    s = loadgen.summarize(records, slo_ttft=0.5, slo_tpot=0.2)
    assert (s["completed"], s["failed"]) == (4, 1)
    span = 1.9 - 0.0
    assert math.isclose(s["throughput"], 9 / span) and math.isclose(s["goodput"], 2 / span)
    assert math.isclose(s["ttft_p50"], np.percentile([0.2, 1.0, 0.1, 0.1], 50))
    assert math.isclose(s["tpot_p99"], np.percentile([0.1, 0.1, 0.4], 99))
    assert math.isclose(s["itl_p50"], np.percentile([0.1, 0.1, 0.1, 0.4, 0.4], 50))
    with pytest.raises(ValueError):
        loadgen.summarize(records, slo_ttft=-1, slo_tpot=0.2)
    with pytest.raises(ValueError):
        loadgen.summarize(records[4:], 1, 1)


# ------------------------------------------------------------------------------------------ the real server

@pytest.mark.slow  # starts the server process: about 15 s on a busy 2-core machine
def test_a_run_through_the_model_server_streams_what_the_model_writes():
    from course import lm
    from course.model_server import ModelServer

    model, tokenizer, _ = lm.load_model()
    _, held = lm.split_corpus(lm.load_corpus())
    plan = loadgen.workload(12, 40.0, held, seed=0, prompt_len=(8, 24), max_tokens=(3, 10))
    bad = [loadgen.Planned(0, 0.0, "caf\u00e9", 4), loadgen.Planned(1, 0.0, "x", 500)]
    with ModelServer() as server:
        run = loadgen.run(server.url, plan)
        refused = loadgen.run(server.url, bad)
    assert server.process is None or server.process.poll() is not None
    assert run.failed == 0 and run.max_late < 0.5
    for p, r in zip(plan, run.records, strict=True):
        want = lm.generate_cached(model, tokenizer.encode(p.prompt), p.max_tokens)
        assert len(r.token_times) == p.max_tokens and r.text == tokenizer.decode(want)
        assert r.finish_reason == "length" and r.sent >= r.scheduled
    assert [r.error.split(":")[0] for r in refused.records] == ["HTTP 400", "HTTP 400"]
    summary = loadgen.summarize(run.records, slo_ttft=60.0, slo_tpot=60.0)
    assert summary["completed"] == 12 and summary["goodput"] > 0
    assert summary["ttft_p50"] <= summary["ttft_p99"]
