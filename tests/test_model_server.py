"""course/model_server.py: TinyLM behind an OpenAI-compatible HTTP server, with versions and a rollback (07b).

One real server process (ModelServer, versions v1 and v2) serves the whole file; each test leaves its routes
and engine settings as it found them."""

import json
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
import torch

from course import lm
from course.model_server import ModelServer, Router, create_app, load_version, stream_completion


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, _ = lm.load_model()
    return model, tokenizer


@pytest.fixture(scope="module")
def server():
    with ModelServer(versions=("v1", "v2"), max_batch=8) as running:
        yield running


def complete(server, **body):
    return httpx.post(server.url + "/v1/completions", json={"model": "tinylm@v1", **body}, timeout=30)


def events(response) -> list[str]:
    """The `data:` payloads of a Server-Sent Events stream, checking the framing on the way."""
    text = response.read().decode()
    assert text.endswith("\n\n"), "every event ends with a blank line"
    chunks = text[:-2].split("\n\n")
    assert all(chunk.startswith("data: ") for chunk in chunks), chunks[:3]
    return [chunk[len("data: "):] for chunk in chunks]


def stats(server) -> dict:
    return httpx.get(server.url + "/admin/stats", timeout=10).json()


def wait_until(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_not_streamed_completions_are_the_models_own_greedy_tokens(server, tiny):
    model, tokenizer = tiny
    for prompt, n_new in (("The KV cache ", 24), ("def train(", 5), ("a", 1)):
        reply = complete(server, prompt=prompt, max_tokens=n_new)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        expected = tokenizer.decode(lm.generate_cached(model, tokenizer.encode(prompt), n_new))
        assert body["object"] == "text_completion" and body["model"] == "tinylm@v1"
        choice = {"index": 0, "text": expected, "finish_reason": "length", "logprobs": None}
        assert body["choices"] == [choice]
        assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": n_new,
                                 "total_tokens": len(prompt) + n_new}


def test_a_stream_sends_one_event_per_token_then_done(server, tiny):
    model, tokenizer = tiny
    prompt, n_new = "Federated learning ", 12
    body = {"model": "tinylm@v1", "prompt": prompt, "max_tokens": n_new, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads = events(r)
    assert payloads[-1] == "[DONE]" and len(payloads) == n_new + 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == "tinylm@v1" for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert all(len(t) == 1 for t in texts), "one character-token per event"
    assert "".join(texts) == tokenizer.decode(lm.generate_cached(model, tokenizer.encode(prompt), n_new))
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert reasons == [None] * (n_new - 1) + ["length"]


def test_sampling_is_seeded_and_n_gives_that_many_choices(server):
    body = {"prompt": "The ", "max_tokens": 20, "temperature": 1.0, "seed": 7}
    first, again = (complete(server, **body).json() for _ in range(2))
    assert first["choices"][0]["text"] == again["choices"][0]["text"], "the same seed gives the same text"
    several = complete(server, **body, n=3).json()
    assert [c["index"] for c in several["choices"]] == [0, 1, 2]
    assert all(len(c["text"]) == 20 for c in several["choices"])
    assert several["usage"]["completion_tokens"] == 60


def test_parallel_samples_stream_with_their_index_and_one_done(server):
    body = {"model": "tinylm@v1", "prompt": "The ", "max_tokens": 6, "temperature": 1.0, "seed": 3, "n": 2,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        payloads = events(r)
    assert payloads.count("[DONE]") == 1 and payloads[-1] == "[DONE]"
    choices = [json.loads(p)["choices"][0] for p in payloads[:-1]]
    assert sorted(c["index"] for c in choices) == [0] * 6 + [1] * 6
    assert [c["finish_reason"] for c in choices].count("length") == 2


def test_the_streaming_client_times_each_token_and_reports_errors(server, tiny):
    model, tokenizer = tiny
    out = stream_completion(server.url, "Paged ", 15, model="tinylm@v1")
    assert out["model"] == "tinylm@v1" and out["finish_reason"] == "length" and len(out["times"]) == 15
    assert out["text"] == tokenizer.decode(lm.generate_cached(model, tokenizer.encode("Paged "), 15))
    assert out["sent"] <= out["times"][0] and out["times"] == sorted(out["times"])
    seen = []
    stream_completion(server.url, "a", 3, model="tinylm@v1", on_token=lambda m, n: seen.append((m, n)))
    assert seen == [("tinylm@v1", 1), ("tinylm@v1", 2), ("tinylm@v1", 3)]
    with pytest.raises(RuntimeError, match="HTTP 400: .*context length"):
        stream_completion(server.url, "x" * 120, 20)


def test_create_app_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="unknown version"):
        create_app(["v1", "v5"])
    with pytest.raises(ValueError, match="distinct"):
        create_app(["v1", "v1"])
    with pytest.raises(ValueError, match="unknown engine option"):
        create_app(["v1"], engine_options={"speed": "fast"})


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "caf\u00e9"}, 400, "never saw"),
    ({"prompt": "x" * 100, "max_tokens": 40}, 400, "maximum context length is 128"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": ""}, 400, "empty"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "hi", "stop": ["\n\n"]}, 400, "single characters"),
])
def test_bad_requests_get_openai_error_bodies(server, body, status, words):
    reply = complete(server, **body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_a_stop_character_ends_the_completion_with_reason_stop(server, tiny):
    model, tokenizer = tiny
    text = tokenizer.decode(lm.generate_cached(model, tokenizer.encode("The KV cache "), 30))
    stop = text[5]
    body = complete(server, prompt="The KV cache ", max_tokens=30, stop=stop).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[:text.index(stop)], "the stop text is left out"
    assert body["usage"]["completion_tokens"] == text.index(stop) + 1


def test_models_and_health(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["tinylm", "tinylm@v1", "tinylm@v2"]


def test_the_router_draws_versions_by_weight_from_a_seeded_rng():
    router = Router(["v1", "v2"], {"v1": 0.9, "v2": 0.1}, seed=3)
    picks = [router.pick("tinylm") for _ in range(2000)]
    again = Router(["v1", "v2"], {"v1": 0.9, "v2": 0.1}, seed=3)
    assert picks == [again.pick("tinylm") for _ in range(2000)]
    assert 0.08 < picks.count("v2") / len(picks) < 0.12
    assert router.pick("tinylm@v2") == "v2"
    router.set({"v2": 3, "v1": 1}, seed=5)
    assert router.weights == {"v1": 0.25, "v2": 0.75}
    first = [router.pick("tinylm") for _ in range(50)]
    router.set({"v2": 3, "v1": 1}, seed=5)
    assert [router.pick("tinylm") for _ in range(50)] == first, "a reseeded router repeats its draws"
    router.rollback()
    assert router.rollback() == {"v1": 0.9, "v2": 0.1}
    with pytest.raises(Exception, match="nothing to roll back"):
        router.rollback()
    for bad in ({}, {"v3": 1}, {"v1": -1}, {"v1": 0}, {"v1": "a lot"}):
        with pytest.raises(Exception):
            router.set(bad)


def test_routes_pin_and_weigh_versions_and_a_rollback_restores_them(server):
    assert complete(server, model="tinylm@v2", prompt="a", max_tokens=1).json()["model"] == "tinylm@v2"
    before = httpx.get(server.url + "/v1/models").json()["routes"]
    reply = httpx.post(server.url + "/admin/routes", json={"v2": 1.0})
    assert reply.status_code == 200 and reply.json()["routes"] == {"v2": 1.0}
    served = {complete(server, model="tinylm", prompt="a", max_tokens=1).json()["model"] for _ in range(5)}
    assert served == {"tinylm@v2"}
    httpx.post(server.url + "/admin/routes", json={"v1": 1, "v2": 1})
    served = [complete(server, model="tinylm", prompt="a", max_tokens=1).json()["model"] for _ in range(30)]
    assert set(served) == {"tinylm@v1", "tinylm@v2"}
    for _ in range(2):
        assert httpx.post(server.url + "/admin/rollback").status_code == 200
    assert httpx.get(server.url + "/v1/models").json()["routes"] == before
    assert httpx.post(server.url + "/admin/routes", json={"v7": 1}).status_code == 400


def test_a_rollback_mid_stream_lets_the_stream_finish_on_its_version(server, tiny):
    model, tokenizer = tiny
    failed_before = sum(v["failed"] for v in stats(server)["versions"].values())
    httpx.post(server.url + "/admin/routes", json={"v2": 1.0})
    texts, models = [], set()
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"model": "tinylm", "prompt": "The ", "max_tokens": 80, "stream": True}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            texts.append(chunk["choices"][0]["text"])
            models.add(chunk["model"])
            if len(texts) == 2:
                assert httpx.post(server.url + "/admin/rollback").status_code == 200
                after = complete(server, model="tinylm", prompt="b", max_tokens=2).json()
                assert after["model"] == "tinylm@v1", "new requests follow the rolled-back routes at once"
    assert models == {"tinylm@v2"} and len(texts) == 80
    v2 = load_version("v2", model)
    assert "".join(texts) == tokenizer.decode(lm.generate_cached(v2, tokenizer.encode("The "), 80))
    assert sum(v["failed"] for v in stats(server)["versions"].values()) == failed_before


def test_the_engine_is_reconfigured_when_idle_and_refused_while_busy(server, tiny):
    model, tokenizer = tiny
    url = server.url + "/admin/engine"
    reply = httpx.post(url, json={"policy": "static", "batch_window_s": 0.005, "max_batch": 4})
    assert reply.status_code == 200, reply.text
    assert stats(server)["versions"]["v1"]["options"]["policy"] == "static"
    expected = tokenizer.decode(lm.generate_cached(model, tokenizer.encode("Paging "), 10))
    assert complete(server, prompt="Paging ", max_tokens=10).json()["choices"][0]["text"] == expected
    assert httpx.post(url, json={"batch_window_s": 2.0}).status_code == 200  # a lone request now waits 2 s
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"model": "tinylm@v1", "prompt": "The ", "max_tokens": 5, "stream": True}) as r:
        busy = httpx.post(url, json={"policy": "continuous"})
        assert busy.status_code == 409 and "idle" in busy.json()["error"]["message"]
        assert len(events(r)) == 6
    assert httpx.post(url, json={"nonsense": 1}).status_code == 400
    back = {"policy": "continuous", "batch_window_s": 0.0, "max_batch": 8}
    assert httpx.post(url, json=back).status_code == 200


def test_a_client_that_goes_away_is_aborted_in_the_engine(server):
    before = stats(server)["versions"]["v1"]
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"model": "tinylm@v1", "prompt": "The ", "max_tokens": 120, "stream": True}) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    # the server notices at its next send; the request leaves the engine long before its 120 tokens
    assert wait_until(lambda: stats(server)["versions"]["v1"]["aborted"] == before["aborted"] + 1)
    after = stats(server)["versions"]["v1"]
    assert after["in_flight"] == 0 and after["completion_tokens"] - before["completion_tokens"] < 120
    assert after["free_blocks"] == before["free_blocks"], "the aborted request's cache blocks are back"


def test_concurrent_streams_are_batched_and_each_gets_its_own_tokens(server, tiny):
    model, tokenizer = tiny
    prompts = ["The ", "A model ", "def f(", "Serving ", "Blocks "]
    results = {}

    def one(prompt):
        results[prompt] = complete(server, prompt=prompt, max_tokens=30).json()["choices"][0]["text"]

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for prompt in prompts:
        assert results[prompt] == tokenizer.decode(lm.generate_cached(model, tokenizer.encode(prompt), 30))


def test_v2_stores_int8_weights_and_stays_close_to_v1(tiny):
    model, tokenizer = tiny
    v2 = load_version("v2", model)
    assert all(b.attn.qkv.weight_int8.dtype == torch.int8 for b in v2.blocks)
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear), "v1 is left as it was"
    ids = torch.tensor([tokenizer.encode("The KV cache keeps keys and values")])
    assert torch.allclose(v2(ids), model(ids), atol=0.1)
    with pytest.raises(ValueError, match="unknown version"):
        load_version("v3", model)


def test_stop_leaves_no_process_and_a_failed_start_shows_the_log(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"model_server_8000_pid{dead.pid}_abc.log"  # a killed kernel's server's log
    stale.write_text("")
    server = ModelServer().start()
    assert not stale.exists(), "the log of a server whose starter died is removed at the next start"
    assert server.log_path.exists() and server.log_path.parent == tmp_path
    process = psutil.Process(server.pid)
    family = [process, *process.children(recursive=True)]
    assert httpx.get(server.url + "/health").status_code == 200
    assert wait_until(lambda: "Ctrl-C stops it" in server.log_tail(), timeout_s=5), server.log_tail()
    assert f"http://127.0.0.1:{server.port}" in server.log_tail(), "the start line names the address"
    server.stop()
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert server.stop() == [], "stopping twice is harmless"
    with pytest.raises(RuntimeError, match="the server is not running"):
        server.url


@pytest.mark.slow
def test_a_server_that_cannot_start_says_why():
    server = ModelServer(versions=("v9",))
    with pytest.raises(RuntimeError, match="(?s)exited with code .*unknown version"):
        server.start()
    assert server.process is None and server.log_path.exists(), "the log is kept when the start failed"
    server.log_path.unlink()


@pytest.mark.slow
def test_a_killed_kernel_takes_its_server_with_it():
    """A notebook kernel that dies (SIGKILL: no atexit, no finally) must not leave its server running."""
    script = ("import time; from course.model_server import ModelServer; "
              "s = ModelServer().start(); print(s.pid, flush=True); time.sleep(120)")
    kernel = subprocess.Popen([sys.executable, "-c", script],
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(kernel.stdout.readline())
        assert psutil.pid_exists(pid)
        kernel.kill()
        kernel.wait(timeout=10)
        def gone():
            return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

        assert wait_until(gone, timeout_s=15), "the server outlived the process that started it"
    finally:
        kernel.kill()
        kernel.stdout.close()
