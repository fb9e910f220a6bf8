"""The HTTP API through the official openai client (sync and async, streaming and not), and the
server's own promises: errors as OpenAI error objects with 4xx, 429, 401, body limit, a killed
client frees its blocks, /metrics. Oracle for the text: the offline Engine on the same ids."""
import asyncio
import json
import socket
import time

import httpx
import numpy as np
import openai
import pytest

from microgpt.inference.engine import Engine
from microgpt.inference.sampling import SamplingConfig
from microgpt.serve.app import create_app
from microgpt.tensor import no_grad
from microgpt.tokenizer import chat
from serve_helpers import serve_in_thread, tiny_model, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def served():
    model, tok = tiny_model()
    app = create_app(model, tok, "tiny", max_batch=8, max_queue=64, body_limit=4096)
    with serve_in_thread(app) as base:
        yield base, model, tok, app


def _client(base, **kw):
    return openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=30, **kw)


def _expected(model, tok, ids, n, stop_ids):
    out = Engine(model, tok).generate_ids([ids], n, SamplingConfig(temperature=0), stop_ids=stop_ids)[0]
    shown = [t for t in out.ids if t not in stop_ids]
    return tok.decode(shown), out.finish_reason


def test_completion_equals_the_offline_engine(served):
    base, model, tok, _ = served
    c = _client(base)
    r = c.completions.create(model="tiny", prompt="Hello", max_tokens=12, temperature=0)
    text, reason = _expected(model, tok, tok.encode("Hello"), 12, (tok.eot_id,))
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == ("length" if reason == "length" else "stop")
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "text_completion" and r.model == "tiny"


def test_streaming_completion_pieces_add_up(served):
    base, *_ = served
    c = _client(base)
    whole = c.completions.create(model="tiny", prompt="abc", max_tokens=20, temperature=0).choices[0].text
    pieces, reasons = [], []
    for chunk in c.completions.create(model="tiny", prompt="abc", max_tokens=20, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == whole and reasons[-1] in ("length", "stop") and not any(reasons[:-1])


def test_raw_stream_ends_with_done(served):
    base, *_ = served
    with httpx.stream("POST", base + "/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True},
                      timeout=30) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_chat_through_the_template(served):
    base, model, tok, _ = served
    c = _client(base)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    ids, _ = chat.encode_chat(tok, messages, add_generation_prompt=True)
    text, _ = _expected(model, tok, ids, 10, tuple(chat.stop_token_ids(tok)))
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True))
    assert streamed == text


def test_async_client_concurrent_requests(served):
    base, model, tok, _ = served

    async def main():
        c = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)
        prompts = [f"p{i} " * (1 + i % 5) for i in range(12)]
        outs = await asyncio.gather(*[c.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0)
                                      for p in prompts])
        stream = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "yo"}],
                                                 max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        await c.close()
        return prompts, outs, chunks

    prompts, outs, chunks = asyncio.run(main())
    for p, r in zip(prompts, outs):
        assert r.choices[0].text == _expected(model, tok, tok.encode(p), 8, (tok.eot_id,))[0]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_parameters_stop_seed_n_logprobs(served):
    base, *_ = served
    c = _client(base)
    plain = c.completions.create(model="tiny", prompt="Hello", max_tokens=16, temperature=0).choices[0].text
    if len(plain) >= 4:
        cut = plain[2:4]
        r = c.completions.create(model="tiny", prompt="Hello", max_tokens=16, temperature=0, stop=[cut])
        assert r.choices[0].text == plain[:plain.find(cut)] and r.choices[0].finish_reason == "stop"
    a = c.completions.create(model="tiny", prompt="Hi", max_tokens=10, temperature=1.0, seed=5, n=3)
    b = c.completions.create(model="tiny", prompt="Hi", max_tokens=10, temperature=1.0, seed=5, n=3)
    assert [x.text for x in a.choices] == [x.text for x in b.choices] and len(a.choices) == 3
    assert [x.index for x in a.choices] == [0, 1, 2]
    r = c.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0, logprobs=1)
    assert all(lp <= 0 for lp in r.choices[0].logprobs.token_logprobs)


def test_top_logprobs_are_the_models_best_tokens(served):
    """completions' logprobs=k and chat's top_logprobs=k: the k best log-probabilities of each
    position, best first, against the model's own log-softmax (GPT.forward) at the first one."""
    base, model, tok, _ = served
    c = _client(base)
    with no_grad():
        z = model(np.array([tok.encode("Hi")]))[0].numpy()[0, -1].astype(np.float64)
    want = np.sort(z - z.max() - np.log(np.exp(z - z.max()).sum()))[::-1][:3]
    r = c.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.top_logprobs) == len(lp.token_logprobs) == len(lp.tokens)
    np.testing.assert_allclose(sorted(lp.top_logprobs[0].values(), reverse=True), want[:len(lp.top_logprobs[0])],
                               atol=1e-4)
    for top, chosen in zip(lp.top_logprobs, lp.token_logprobs):
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(chosen)   # greedy: the best
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                     temperature=0, logprobs=True, top_logprobs=2)
    for entry in chat.choices[0].logprobs.content:
        values = [t.logprob for t in entry.top_logprobs]
        assert len(values) == 2 and values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(entry.logprob)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


def test_errors_are_openai_error_objects(served):
    base, *_ = served
    c = _client(base)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=5, temperature=7)
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x" * 200, max_tokens=5)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=500)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="other", prompt="x", max_tokens=5)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    r = httpx.post(base + "/v1/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(base + "/v1/completions", content=json.dumps({"prompt": "x" * 5000}), timeout=10)
    assert r.status_code == 413 and "error" in r.json()
    r = httpx.get(base + "/nowhere", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    assert [m.id for m in c.models.list().data] == ["tiny"]


@pytest.fixture
def served_long():
    """A server of its own whose context holds a 1000-token answer: the stream must still be
    running when its client is killed (a 100-token answer of the tiny model could finish before
    the server noticed the closed socket, and then count as finished, not cancelled)."""
    model, tok = tiny_model(block=1024)
    app = create_app(model, tok, "tiny", max_batch=8, max_queue=64, body_limit=4096)
    with serve_in_thread(app) as base:
        yield base, model, tok, app


def test_a_killed_client_frees_its_blocks(served_long):
    base, _, _, app = served_long
    sched = app.state.engine.scheduler
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10)
    body = json.dumps({"prompt": "kill me", "max_tokens": 1000, "stream": True, "temperature": 0}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    for _ in range(50):                                  # headers and the first event, bounded
        received += sock.recv(4096)
        if b"data:" in received:
            break
    assert b"data:" in received
    wait_until(lambda: sched.cache.pool.num_used > 0, what="the stream holds blocks")
    sock.close()
    wait_until(lambda: sched.cache.pool.num_used == 0 and not sched.has_work(), timeout=15,
               what="the killed stream's blocks are freed")
    assert app.state.engine.outcomes["cancelled"] >= 1


def test_metrics_are_prometheus_text(served):
    base, *_ = served
    text = httpx.get(base + "/metrics", timeout=10).text
    for name in ("microgpt_queue_depth", "microgpt_running_sequences", "microgpt_kv_blocks_used",
                 "microgpt_tokens_per_second", "microgpt_ttft_seconds_bucket", "microgpt_tpot_seconds_count"):
        assert name in text
    assert httpx.get(base + "/health", timeout=10).json()["status"] == "ok"
    page = httpx.get(base + "/", timeout=10)
    assert page.status_code == 200 and "<textarea id=\"system\"" in page.text


def test_a_full_queue_answers_429_with_retry_after():
    model, tok = tiny_model(block=2048)
    app = create_app(model, tok, "tiny", max_batch=1, max_queue=1)
    with serve_in_thread(app) as base:
        engine = app.state.engine
        long = {"prompt": "a", "max_tokens": 2000, "temperature": 0, "stream": True, "stop": ["\u2603"]}
        streams = [httpx.stream("POST", base + "/v1/completions", json=long, timeout=30) for _ in range(2)]
        opened = [s.__enter__() for s in streams[:1]]
        wait_until(lambda: engine.scheduler.num_running == 1, what="one running")
        opened.append(streams[1].__enter__())
        wait_until(lambda: engine.pending() == 1, what="one waiting")
        r = httpx.post(base + "/v1/completions", json={"prompt": "b", "max_tokens": 2}, timeout=10)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            _client(base).completions.create(model="tiny", prompt="c", max_tokens=2)
        for s in streams:
            s.__exit__(None, None, None)
        wait_until(lambda: not engine.scheduler.has_work(), timeout=15, what="cancelled streams gone")


def test_api_key_is_required_when_set():
    model, tok = tiny_model()
    app = create_app(model, tok, "tiny", api_key="s3cret")
    with serve_in_thread(app) as base:
        with pytest.raises(openai.AuthenticationError):
            _client(base).completions.create(model="tiny", prompt="x", max_tokens=2)
        ok = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert ok.completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].finish_reason
        assert httpx.get(base + "/metrics", timeout=10).status_code == 401
        assert httpx.get(base + "/health", timeout=10).status_code == 200
        time.sleep(0)
