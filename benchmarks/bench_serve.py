"""Serving: `microgpt serve` under concurrent streaming clients vs the same requests one by one.

The server is the real one (serve/app.py on uvicorn, in a process of its own, a `spawn` child of
this one, on a free 127.0.0.1 port) over a GPT-2 of the "small" preset's shape (6 layers, 384
channels, 6 heads, context 256) with random weights and a BPE tokenizer of 8192 ids trained on
microgpt's own sources (nothing is downloaded). Every request is a streaming /v1/completions call
with a 16-token prompt, greedy, 128 new tokens at most; the clients are httpx streams on an asyncio
loop in this process, as a real client would be another process: the same load generator for both
sides of every row.

Rows:
  serve concurrency 32 vs sequential   aggregate generated tokens/s of 32 clients at once ("ours")
                                       vs the same 32 requests sent one after another ("peer"),
                                       alternated, >= 5 rounds each; target >= 4x (issue 16)
  ttft p50/p99 c1, c8, c32             time to the first streamed token, ms (c1: the sequential
                                       runs, c8: 32 requests 8 at a time, c32: all at once)
  tpot p50/p99 c1, c8, c32             mean time per output token after the first, ms
  peak kv memory c32                   the paged cache's peak bytes during the c32 runs, against a
                                       cache that reserves the full context for 32 sequences
  serve vs llama.cpp c8                 aggregate tokens/s of the 32 requests, 8 at a time, non-streaming,
                                       against llama-cpp-python's OpenAI-compatible server
                                       (`python -m llama_cpp.server`, 2 threads) on the same model
                                       exported to GGUF F32 (microgpt export-gguf), alternated; target
                                       >= 1.0x; skipped when llama_cpp.server does not import
Greedy outputs are identical at every concurrency (checked first), so both sides make the
same tokens. Server and clients are two processes sharing the 2 cores; llama.cpp's server is a
process of its own too, measured by the same clients while ours sits idle.

    flock /tmp/bench.lock python benchmarks/bench_serve.py [--quick] [--json FILE]
"""
import asyncio
import glob
import json
import os
import socket
import statistics
import sys
import threading
import time

# llama.cpp's server gets the environment the bench started with: importing microgpt sets
# OMP_WAIT_POLICY=PASSIVE (backends/cpu_lib.py), which a child inheriting our environment would
# run under, its workers put to sleep after every token (bench_quantize.py measured a 2-3x
# handicap). Our server runs as `microgpt serve` runs: PASSIVE after a short spin.
PEER_ENV = dict(os.environ)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from microgpt.cli import openmp_environment  # noqa: E402

openmp_environment("serve")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE]

import harness  # noqa: E402

PROMPT, NEW = 16, 128


def tokenizer():
    from microgpt.tokenizer import Tokenizer
    text = "".join(open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(ROOT, "microgpt", "**",
                                                                                          "*.py"), recursive=True)))
    return Tokenizer.train([text], 8192)


def build(quick):
    from microgpt.nn import GPT, GPTConfig
    from microgpt.serve.app import create_app
    tok = tokenizer()
    layers, channels = (2, 128) if quick else (6, 384)
    config = GPTConfig(family="gpt2", vocab_size=tok.vocab_size, block_size=256, n_layer=layers,
                       n_head=channels // 64, n_embd=channels)
    model = GPT(config, seed=0).eval()
    return create_app(model, tok, "small", max_batch=32, max_queue=256), tok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The server in a process of its own (a `spawn` child): real clients are other processes, and
    clients in the server's process would take turns with it at the GIL on the same 2 cores.

    The child builds the model and the tokenizer, serves on a free 127.0.0.1 port and answers
    this process's few questions about its engine (the prompts, the KV pool's peak, a GGUF
    export) over a pipe; the load generator (every client, both sides) stays in this process."""

    def __init__(self, quick, n):
        import multiprocessing
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=serve_in_child, args=(child, quick, n), daemon=True)
        self.proc.start()
        if not self.conn.poll(600):
            self.proc.kill()
            raise RuntimeError("the server did not start")
        self.port, self.prompts, self.static_kv_bytes = self.conn.recv()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def ask(self, *command):
        self.conn.send(command)
        return self.conn.recv()

    def close(self):
        try:
            self.ask("stop")
        finally:
            self.proc.join(timeout=30)
            if self.proc.is_alive():
                self.proc.kill()


def serve_in_child(conn, quick, n):
    """The server process: uvicorn on a thread, this pipe's commands on the main thread."""
    import uvicorn
    app, tok = build(quick)
    engine = app.state.engine
    rng = np.random.default_rng(0)
    prompts = [tok.decode(rng.integers(300, tok.vocab_size - 16, PROMPT).tolist()) for _ in range(n)]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    cfg = engine.scheduler.model.config
    static = n * cfg.block_size * 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_size * 4
    conn.send((port, prompts, static))
    cache = engine.scheduler.cache
    while True:
        command = conn.recv()
        if command[0] == "reset_peak":
            cache.pool.peak_used = 0
            conn.send(None)
        elif command[0] == "peak":
            conn.send(cache.pool.peak_used * cache.bytes_per_block)
        elif command[0] == "export":
            from microgpt.interop.gguf_export import export_gguf
            export_gguf(engine.scheduler.model, tok, command[1], "f32")
            conn.send(engine.scheduler.model.config.block_size)
        elif command[0] == "stop":
            server.should_exit = True
            thread.join(timeout=30)
            conn.send(None)
            return


async def one(client, base, prompt):
    """(text, tokens, ttft s, tpot s) of one streaming completion."""
    body = {"prompt": prompt, "max_tokens": NEW, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, text, tokens = time.perf_counter(), None, "", 0
    async with client.stream("POST", base + "/v1/completions", json=body, timeout=600) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk["choices"]:
                if c["text"] and first is None:
                    first = time.perf_counter()
                text += c["text"]
    end = time.perf_counter()
    first = first or end
    return text, tokens, first - start, (end - first) / max(tokens - 1, 1)


def run(base, prompts, concurrency):
    """All prompts, `concurrency` at a time -> (wall s, [results in prompt order])."""
    import httpx

    async def main():
        limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
        async with httpx.AsyncClient(limits=limits) as client:
            gate = asyncio.Semaphore(concurrency)

            async def limited(p):
                async with gate:
                    return await one(client, base, p)
            start = time.perf_counter()
            out = await asyncio.gather(*[limited(p) for p in prompts])
            return time.perf_counter() - start, out
    return asyncio.run(main())


FAILED = []          # (server, status, text) of non-streaming requests that did not answer 200


async def _plain(client, base, prompt, model):
    body = {"model": model, "prompt": prompt, "max_tokens": NEW, "temperature": 0}
    r = await client.post(base + "/v1/completions", json=body, timeout=600)
    if r.status_code != 200:          # counted (and reported in the row), its tokens are 0
        FAILED.append((base, r.status_code, r.text[:200]))
        return 0
    return r.json()["usage"]["completion_tokens"]


def plain_rate(base, prompts, concurrency, model):
    """Generated tokens/s of all prompts, `concurrency` at a time, non-streaming."""
    import httpx

    async def main():
        async with httpx.AsyncClient() as client:
            gate = asyncio.Semaphore(concurrency)

            async def limited(p):
                async with gate:
                    return await _plain(client, base, p, model)
            start = time.perf_counter()
            tokens = await asyncio.gather(*[limited(p) for p in prompts])
            return sum(tokens) / (time.perf_counter() - start)
    return asyncio.run(main())


class LlamaCppServer:
    """llama-cpp-python's server on a GGUF F32 export of the model, or None without it."""

    @classmethod
    def start(cls, ours, workdir):
        try:
            import llama_cpp.server.app  # noqa: F401
        except ImportError as exc:
            print(f"llama_cpp.server not importable ({exc}); no llama.cpp row")
            return None
        import subprocess

        import httpx

        path = os.path.join(workdir, "small-f32.gguf")
        block_size = ours.ask("export", path)           # the serving process holds the model
        self = cls()
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", path, "--n_ctx",
                                      str(block_size), "--n_threads", "2", "--n_threads_batch", "2",
                                      "--host", "127.0.0.1", "--port", str(self.port), "--model_alias", "small"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV)
        for _ in range(1200):
            try:
                if httpx.get(self.base + "/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("llama_cpp.server did not start")

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def percentile(values, q):
    return float(np.percentile(np.array(values), q))


def main():
    args = harness.parse_args(__doc__.splitlines()[0])
    n = 16 if args.quick else 32
    server = Server(args.quick, n)
    prompts = server.prompts
    try:
        top = f"c{n}"
        samples = {"c1": [], "c8": [], top: []}
        tokens_seen = {}

        def record(label, results):
            samples[label].extend((r[2], r[3]) for r in results)
            tokens_seen[label] = [r[0] for r in results]

        def concurrent():
            wall, results = run(server.base, prompts, n)
            record(top, results)
            return sum(r[1] for r in results), wall

        def sequential():
            wall, results = run(server.base, prompts, 1)
            record("c1", results)
            return sum(r[1] for r in results), wall

        tokens, _ = concurrent()                                       # warm-up and the check
        _, _ = sequential()
        _, c8 = run(server.base, prompts, 8)
        record("c8", c8)
        assert tokens_seen[top] == tokens_seen["c1"] == tokens_seen["c8"], "greedy text differs with concurrency"
        for k in samples:
            samples[k].clear()
        server.ask("reset_peak")
        rounds = 2 if args.quick else 5
        conc, seq = [], []
        for _ in range(rounds):
            load = harness.load_average()[0]
            t, wall = concurrent()
            conc.append((t / wall, load))
            t, wall = sequential()
            seq.append((t / wall, load))
            _, c8 = run(server.base, prompts, 8)
            record("c8", c8)
        peak, static = server.ask("peak"), server.static_kv_bytes
        import tempfile
        with tempfile.TemporaryDirectory() as workdir:
            llama = LlamaCppServer.start(server, workdir)
            llama_rows = []
            if llama is not None:
                try:
                    plain_rate(server.base, prompts[:4], 4, "small")
                    plain_rate(llama.base, prompts[:4], 4, "small")              # warm-up
                    ours_c8, theirs_c8 = [], []
                    for _ in range(rounds):
                        load = harness.load_average()[0]
                        ours_c8.append((plain_rate(server.base, prompts, 8, "small"), load))
                        theirs_c8.append((plain_rate(llama.base, prompts, 8, "small"), load))
                    llama_rows = [ours_c8, theirs_c8]
                finally:
                    llama.close()
    finally:
        server.close()

    rates_c, rates_s = [r for r, _ in conc], [r for r, _ in seq]
    loads = [load for _, load in conc + seq]
    ours, peer = statistics.median(rates_c), statistics.median(rates_s)
    rows = [{"name": f"serve concurrency {n} vs sequential", "unit": "tokens/s", "ours": ours,
             "ours_min": min(rates_c), "ours_max": max(rates_c), "peer_name": "the same requests one by one",
             "peer": peer, "peer_min": min(rates_s), "peer_max": max(rates_s), "ratio": ours / peer,
             "target": 4.0, "passed": ours / peer >= 4.0, "rounds": rounds, "tokens_per_round": tokens,
             "load_min": min(loads), "load_max": max(loads)}]
    for label in samples:
        ttft = [s[0] * 1e3 for s in samples[label]]
        tpot = [s[1] * 1e3 for s in samples[label]]
        for what, values in (("ttft", ttft), ("tpot", tpot)):
            for q in (50, 99):
                rows.append({"name": f"{what} p{q} {label}", "unit": "ms (lower is better)",
                             "ours": percentile(values, q), "ours_min": min(values), "ours_max": max(values),
                             "peer_name": "-", "peer": None, "peer_min": None, "peer_max": None, "ratio": None,
                             "samples": len(values)})
    rows.append({"name": f"peak kv memory {top}", "unit": "MiB", "ours": peak / 2**20, "ours_min": peak / 2**20,
                 "ours_max": peak / 2**20, "peer_name": f"a cache reserving the full context for {n} sequences",
                 "peer": static / 2**20, "peer_min": static / 2**20, "peer_max": static / 2**20,
                 "ratio": static / peak})
    if llama_rows:
        a, b = [r for r, _ in llama_rows[0]], [r for r, _ in llama_rows[1]]
        loads = [load for _, load in llama_rows[0] + llama_rows[1]]
        rows.append({"name": "serve vs llama.cpp c8", "unit": "tokens/s", "ours": statistics.median(a),
                     "ours_min": min(a), "ours_max": max(a), "peer_name": "llama-cpp-python server, GGUF F32",
                     "peer": statistics.median(b), "peer_min": min(b), "peer_max": max(b),
                     "ratio": statistics.median(a) / statistics.median(b), "target": 1.0,
                     "passed": statistics.median(a) / statistics.median(b) >= 1.0, "rounds": rounds,
                     "load_min": min(loads), "load_max": max(loads), "failed_requests": FAILED[:10],
                     "failed_count": len(FAILED)})
    for row in rows:
        print(harness._format_row(row), flush=True)
    harness.report(rows, args, "serving: continuous batching over a paged KV cache")


if __name__ == "__main__":
    main()
