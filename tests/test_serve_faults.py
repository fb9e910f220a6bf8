"""Faults: malformed bodies and headers get a 4xx and the server keeps serving; SIGTERM lets the
in-flight stream finish. Every loop is bounded in count and time; traffic stays on 127.0.0.1.

The bodies are drawn by hypothesis so that each is wrong in at least one way (not JSON, not an
object, or one field outside its domain, among random other fields and headers): the answer
must be a 4xx OpenAI error object, never a 500, and /health must still answer after each."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.serve.app import create_app
from serve_helpers import free_port, serve_in_thread, tiny_model, wait_healthy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4),
                           max_leaves=12)
# (field, values that must be refused)
BAD = {
    "prompt": st.none() | st.integers() | st.lists(st.booleans(), min_size=1) | st.lists(st.integers(300, 10**6),
                                                                                       min_size=1),
    "messages": st.none() | st.text(max_size=5) | st.just([]) | st.lists(st.integers(), min_size=1)
    | st.just([{"role": "user"}]) | st.just([{"role": "nobody", "content": "x"}]),
    "max_tokens": st.integers(max_value=0) | st.integers(min_value=10**7) | st.text(max_size=3) | st.just(1.5),
    "temperature": st.floats(min_value=2.01, max_value=1e9) | st.floats(max_value=-0.01, min_value=-1e9)
    | st.text(max_size=3),
    "top_p": st.just(0) | st.floats(min_value=1.01, max_value=1e6) | st.lists(st.integers(), max_size=2),
    "n": st.integers(max_value=0) | st.integers(min_value=9, max_value=10**6) | st.booleans(),
    "stop": st.integers() | st.lists(st.text(max_size=3), min_size=5, max_size=8) | st.just([1, 2]),
    "stream": st.integers() | st.text(max_size=3) | st.just([]),
    "seed": st.text(max_size=3) | st.floats(allow_nan=False) | st.integers(min_value=2**63),
    "presence_penalty": st.floats(min_value=2.5, max_value=1e6) | st.text(max_size=2),
    "logprobs": st.integers(min_value=6, max_value=1000) | st.text(max_size=2),
    "model": st.text(min_size=1, max_size=10).filter(lambda s: s != "tiny"),
}
headers = st.dictionaries(st.sampled_from(["Authorization", "Content-Type", "Accept", "X-Junk", "User-Agent"]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip),
                          max_size=3)          # (httpx itself refuses values with outer spaces)


@st.composite
def bad_bodies(draw):
    kind = draw(st.sampled_from(["bytes", "json", "field", "field"]))
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=60).filter(lambda b: not _is_json_object(b)))
    elif kind == "json":
        body = json.dumps(draw(json_values.filter(lambda v: not isinstance(v, dict)))).encode()
    else:
        obj = draw(st.dictionaries(st.sampled_from(["user", "echo", "suffix", "best_of", "x"]), json_values,
                                   max_size=3))
        obj.update({"max_tokens": 1, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]})
        field = draw(st.sampled_from(sorted(BAD)))
        obj[field] = draw(BAD[field])
        if field == "prompt" and path.endswith("chat/completions"):
            path = "/v1/completions"
        if field == "messages":
            path = "/v1/chat/completions"
        body = json.dumps(obj).encode()
    return path, body


def _is_json_object(raw):
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


@pytest.fixture(scope="module")
def server():
    model, tok = tiny_model()
    with serve_in_thread(create_app(model, tok, "tiny", body_limit=1 << 16)) as base:
        with httpx.Client(base_url=base, timeout=20) as client:
            yield client


def _check_malformed(client, case, extra):
    path, body = case
    r = client.post(path, content=body, headers=extra)
    assert 400 <= r.status_code < 500, (r.status_code, path, body[:200], r.text[:300])
    assert "message" in r.json()["error"]
    assert client.get("/health").status_code == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=bad_bodies(), extra=headers)
def test_malformed_requests_get_a_4xx(server, case, extra):
    _check_malformed(server, case, extra)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=bad_bodies(), extra=headers)
def test_1000_malformed_requests_get_a_4xx(server, case, extra):
    _check_malformed(server, case, extra)


def test_after_the_fuzz_a_good_request_still_works(server):
    r = server.post("/v1/completions", json={"prompt": "ok", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_sigterm_finishes_the_in_flight_stream(tmp_path):
    from microgpt.train import checkpoint as ckpt
    model, tok = tiny_model(block=512)
    run = ckpt.save(str(tmp_path), ckpt.Checkpoint(1, model.config.to_dict(), model.state_dict(), tok))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "microgpt", "serve", run, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MICROGPT_NUM_THREADS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, timeout=60)
        lines, started = [], threading.Event()

        def stream():
            body = {"prompt": "go", "max_tokens": 400, "temperature": 0, "stop": ["\u2603"]}
            with httpx.stream("POST", base + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        reader.join(timeout=90)
        assert not reader.is_alive()
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(timeout=60) == 0       # drained: a clean exit, not death by the re-raised signal
        with pytest.raises(httpx.HTTPError):
            httpx.get(base + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        time.sleep(0)
