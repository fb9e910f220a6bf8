"""A tiny chat model and a live server on a free 127.0.0.1 port, for the serve tests.

serve_in_thread runs uvicorn in this process (a thread), so a test can reach the engine's
scheduler to count blocks; tests of signals start `microgpt serve` as a subprocess instead."""
import contextlib
import socket
import threading
import time

import httpx
import numpy as np

from microgpt.nn import GPT, GPTConfig
from microgpt.tokenizer import Tokenizer

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def tiny_model(block=128, family="gpt2"):
    tok = Tokenizer.bytes_level(special_tokens=SPECIALS)
    config = GPTConfig(family=family, vocab_size=tok.vocab_size, block_size=block, n_layer=2, n_head=4,
                       n_kv_head=2 if family == "llama" else None, n_embd=32)
    model = GPT(config, seed=7)
    rng = np.random.default_rng(8)
    for _, p in model.named_parameters():
        p.data = p.data + rng.normal(0, 0.2, p.shape).astype(np.float32)
    return model.eval(), tok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout=20.0):
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, timeout)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


def wait_healthy(base, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no server at {base} after {timeout} s")


def wait_until(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} did not hold within {timeout} s")
