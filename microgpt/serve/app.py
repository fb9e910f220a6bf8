"""The OpenAI-compatible HTTP API and the chat page, on FastAPI (the `serve` extra).

    app = create_app(model, tokenizer, model_name="microgpt", api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)          # what `microgpt serve RUN` does

Routes:
    POST /v1/completions        prompt (text, a list of one text, or token ids) -> text
    POST /v1/chat/completions   messages through the chat template (tokenizer/chat.py) -> reply
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok"} (no key needed)
    GET  /metrics               Prometheus text (engine_loop.py)
    GET  /                      the chat page (page.html)

Parameters: max_tokens, temperature, top_p, top_k (ours), stop (up to 4 strings), seed, n,
presence_penalty, frequency_penalty, logprobs (completions: logprobs=k; chat: logprobs +
top_logprobs=k, the k best tokens of each position), stream (+ stream_options.include_usage); the
rest of OpenAI's fields are accepted and ignored. `stream: true` sends server-sent events,
`data: {chunk}` per piece of text and `data: [DONE]` at the end.

Errors are OpenAI error objects, {"error": {"message", "type", "param", "code"}}, with a 4xx
status: 400 invalid_request_error (a wrong field, JSON that does not parse; code
context_length_exceeded when the prompt and max_tokens do not fit the context), 401 without
the Bearer key when --api-key is set, 404 for another model name or path, 413 for a body over
the limit, 429 with Retry-After when the queue is full, 503 while shutting down. The body is
parsed here, by hand, so that no malformed input reaches anything that could raise a 500.

Text: each choice decodes its ids with a StreamDecoder (whole UTF-8 characters only) and holds
back (longest stop string - 1) characters so a stop string is never half-sent; the stop string
and the stop token are not part of the text. A client that disconnects cancels its sequences
(their cache blocks are free after the engine's next step).
"""
import asyncio
import hmac
import json
import math
import os
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, MicrogptError
from ..inference.sampling import SamplingConfig
from .engine_loop import EngineLoop, QueueFull
from .scheduler import Request as EngineRequest, Scheduler

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
MAX_N, MAX_STOPS = 8, 4


class BadRequest(Exception):
    def __init__(self, message, param=None, code=None, status=400, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind
        self.headers = headers


def error_response(status, message, kind="invalid_request_error", param=None, code=None, headers=None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


# --- the body, checked field by field ---------------------------------------------------------------

def _number(body, name, default, low, high):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise BadRequest(f"{name} must be a number in [{low}, {high}], got {value!r}", name)
    return float(value)


def _integer(body, name, default, low, high):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer in [{low}, {high}], got {value!r}", name)
    return value


def _stops(body):
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) for s in stop):
        raise BadRequest(f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    return [s for s in stop if s]


class Params:
    """The sampling and output fields shared by both endpoints."""

    def __init__(self, body, chat):
        self.stream = body.get("stream", False)
        if not isinstance(self.stream, bool):
            raise BadRequest("stream must be true or false", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        self.include_usage = options.get("include_usage", False) is True
        self.max_tokens = _integer(body, "max_completion_tokens" if chat and "max_completion_tokens" in body
                                   else "max_tokens", None, 1, 1 << 30)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise BadRequest("top_p must be in (0, 1]", "top_p")
        top_k = _integer(body, "top_k", 0, 0, 1 << 30)
        self.sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        self.presence = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
        self.frequency = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
        self.seed = _integer(body, "seed", None, -(1 << 63), (1 << 63) - 1)
        self.n = _integer(body, "n", 1, 1, MAX_N)
        self.stop = _stops(body)
        logprobs = body.get("logprobs")
        if chat:
            if logprobs is not None and not isinstance(logprobs, bool):
                raise BadRequest("logprobs must be true or false", "logprobs")
            self.logprobs = bool(logprobs)
            self.top_logprobs = _integer(body, "top_logprobs", 0, 0, 20)
            if "top_logprobs" in body and body["top_logprobs"] is not None and not self.logprobs:
                raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
        else:
            if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                         or not 0 <= logprobs <= 5):
                raise BadRequest("logprobs must be an integer in [0, 5]", "logprobs")
            self.logprobs = logprobs is not None
            self.top_logprobs = logprobs or 0           # completions: logprobs=k asks for the k best


def _best_by_text(tokenizer, top):
    """{text: logprob} of [(token, logprob)] best first, keeping the best of tokens that decode alike."""
    out = {}
    for token, logprob in top:
        out.setdefault(tokenizer.decode([token]), logprob)
    return out


# --- one choice's text ---------------------------------------------------------------------------

class Choice:
    def __init__(self, tokenizer, stops):
        from ..tokenizer import StreamDecoder
        self.decoder, self.stops = StreamDecoder(tokenizer), stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text, self.sent, self.ids, self.logprobs, self.tops = "", 0, [], [], []
        self.finish_reason = None

    def feed(self, event, stop_ids):
        """Take one TokenEvent; return the text that became final."""
        if event.token is not None and event.token not in stop_ids:
            self.ids.append(event.token)
            self.logprobs.append(event.logprob)
            self.tops.append(event.top or [])
            self.text += self.decoder.feed(event.token)
            for s in self.stops:
                at = self.text.find(s)
                if at >= 0:
                    self.text = self.text[:at]
                    self.finish_reason = "stop"
        elif event.token is not None:
            self.ids.append(event.token)          # counted in usage, not shown
        if self.finish_reason is None and event.finish_reason is not None:
            self.finish_reason = "stop" if event.finish_reason == "stop" else "length"
            self.text += self.decoder.flush()
            for s in self.stops:
                at = self.text.find(s)
                if at >= 0:
                    self.text = self.text[:at]
        upto = len(self.text) if self.finish_reason else max(self.sent, len(self.text) - self.hold)
        piece, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return piece


# --- from the engine thread to the event loop --------------------------------------------------------

class Mailbox:
    """Token events from the engine thread to the asyncio loop, one wake-up per batch.

    The engine calls each request's callback on its own thread, once per token: 32 events a
    step at 32 streams. Handing each over with its own call_soon_threadsafe wakes the loop 32
    times a step (a write to its self-pipe each, and a turn of the loop that takes the GIL
    from the engine thread). Here the first event of a batch arms one wake-up and the rest
    join it; the loop then puts every waiting event into its request's queue, in order. Each
    event still becomes one SSE chunk (OpenAI's streaming shape: one chunk per token)."""

    def __init__(self, loop):
        self.loop = loop
        self._items, self._lock, self._armed = [], threading.Lock(), False

    def post(self, queue, item):
        """From any thread: item will be put into queue on the loop."""
        with self._lock:
            self._items.append((queue, item))
            if self._armed:
                return
            self._armed = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self):
        with self._lock:
            items, self._items, self._armed = self._items, [], False
        for queue, item in items:
            queue.put_nowait(item)


# --- the app ----------------------------------------------------------------------------------------

def create_app(model, tokenizer, model_name="microgpt", api_key=None, max_batch=32, max_queue=64,
               num_blocks=None, block_size=16, max_step_tokens=256, body_limit=1 << 20, scheduler=None):
    scheduler = scheduler or Scheduler(model, num_blocks, block_size, max_batch, max_step_tokens)
    engine = EngineLoop(scheduler, max_queue)
    context = model.config.block_size
    eot = getattr(tokenizer, "eot_id", None)
    created = int(time.time())

    async def lifespan(app):
        engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.drain)
        engine.stop()

    app = FastAPI(title="microgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.model_name = engine, model_name

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc):
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code, exc.headers)

    @app.middleware("http")
    async def guard(request, call_next):
        path = request.url.path
        if api_key and (path.startswith("/v1/") or path == "/metrics"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {api_key}".encode()):
                return error_response(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                                      code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > body_limit):
            if length.isdigit():
                return error_response(413, f"the request body is larger than {body_limit} bytes",
                                      code="request_too_large")
            return error_response(400, "Content-Length must be a number of bytes")
        return await call_next(request)

    async def read_body(request):
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > body_limit:
                raise BadRequest(f"the request body is larger than {body_limit} bytes", status=413,
                                 code="request_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        name = body.get("model")
        if name is not None and name != model_name:
            raise BadRequest(f"the model {str(name)[:100]!r} does not exist; this server serves "
                             f"{model_name!r}", "model", "model_not_found", status=404)
        return body

    def encode_prompt(body):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, allowed_special="all") if prompt else []
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            if any(not 0 <= t < model.config.vocab_size for t in ids):
                raise BadRequest(f"prompt token ids must lie in [0, {model.config.vocab_size})", "prompt")
        else:
            raise BadRequest("prompt must be a string, a list of one string, or a list of token ids", "prompt")
        if not ids:
            if eot is None:
                raise BadRequest("an empty prompt needs a tokenizer with an end-of-text token", "prompt")
            ids = [eot]
        return ids

    def encode_messages(body):
        from ..tokenizer import chat
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list of {role, content} objects", "messages")
        plain = []
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(f"messages[{k}] must be an object with a role", "messages")
            content = m.get("content")
            if isinstance(content, list):             # [{"type": "text", "text": ...}]
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise BadRequest(f"messages[{k}].content parts must be text parts", "messages")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise BadRequest(f"messages[{k}].content must be a string", "messages")
            if m["role"] not in chat.ROLES:
                raise BadRequest(f"messages[{k}].role must be one of {', '.join(chat.ROLES)}", "messages")
            plain.append({"role": m["role"], "content": content})
        try:
            ids, _ = chat.encode_chat(tokenizer, plain, add_generation_prompt=True)
            stop_ids = tuple(chat.stop_token_ids(tokenizer))
        except MicrogptError as exc:
            raise BadRequest(str(exc), "messages") from None
        return ids, stop_ids

    def requests_for(prompt_ids, params, stop_ids, rid):
        if len(prompt_ids) >= context:
            raise BadRequest(f"this model's context is {context} tokens, the prompt has {len(prompt_ids)}",
                             "messages" if rid.startswith("chatcmpl") else "prompt", "context_length_exceeded")
        room = context - len(prompt_ids)
        if params.max_tokens is not None and params.max_tokens > room:
            raise BadRequest(f"this model's context is {context} tokens: the prompt's {len(prompt_ids)} and "
                             f"max_tokens {params.max_tokens} do not fit; ask for at most {room}",
                             "max_tokens", "context_length_exceeded")
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        return [EngineRequest(f"{rid}-{i}", list(prompt_ids), max_tokens, params.sampling,
                              None if params.seed is None else (params.seed + i) % (1 << 63), stop_ids,
                              params.presence, params.frequency, params.logprobs, params.top_logprobs)
                for i in range(params.n)]

    mailbox = [None]                   # the Mailbox of the loop serving this app

    def submit_all(requests):
        loop = asyncio.get_running_loop()
        if mailbox[0] is None or mailbox[0].loop is not loop:
            mailbox[0] = Mailbox(loop)
        box, queue = mailbox[0], asyncio.Queue()
        done = []
        try:
            for i, r in enumerate(requests):
                engine.submit(r, lambda ev, i=i: box.post(queue, (i, ev)))
                done.append(r.request_id)
        except QueueFull as exc:
            for rid in done:
                engine.cancel(rid)
            if not engine.accepting:
                raise BadRequest("the server is shutting down", status=503, kind="server_error") from None
            raise BadRequest(f"the server is busy ({exc}); retry shortly", status=429, kind="rate_limit_error",
                             code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        return queue

    def usage(prompt_ids, choices):
        completion = sum(len(c.ids) for c in choices)
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                "total_tokens": len(prompt_ids) * len(choices) + completion}

    def logprobs_of(choice, chat):
        if chat:
            return {"content": [{"token": tokenizer.decode([t]), "logprob": lp, "bytes": None,
                                 "top_logprobs": [{"token": tokenizer.decode([b]), "logprob": blp, "bytes": None}
                                                  for b, blp in top]}
                                for t, lp, top in zip(choice.ids, choice.logprobs, choice.tops)]}
        # completions: one {text: logprob} per position (tokens that decode alike share a key)
        return {"tokens": [tokenizer.decode([t]) for t in choice.ids], "token_logprobs": choice.logprobs,
                "top_logprobs": [_best_by_text(tokenizer, top) for top in choice.tops],
                "text_offset": None}

    async def run(request, body, chat):
        params = Params(body, chat)
        if chat:
            prompt_ids, stop_ids = encode_messages(body)
            rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        else:
            prompt_ids = encode_prompt(body)
            stop_ids = () if eot is None else (eot,)
            rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        requests = requests_for(prompt_ids, params, stop_ids, rid)
        choices = [Choice(tokenizer, params.stop) for _ in requests]
        queue = submit_all(requests)
        ids = [r.request_id for r in requests]
        stamp = int(time.time())

        def cancel_unfinished():
            for c, r in zip(choices, ids):
                if c.finish_reason is None:
                    engine.cancel(r)

        def take(i, ev):
            if isinstance(ev, Exception):
                raise BadRequest(f"the request could not run: {ev}") if isinstance(ev, ConfigError) else ev
            if choices[i].finish_reason is not None:
                return ""
            piece = choices[i].feed(ev, stop_ids)
            if choices[i].finish_reason is not None and ev.finish_reason is None:
                engine.cancel(ids[i])                   # a stop string ended it early
            return piece

        if params.stream:
            kind = "chat.completion.chunk" if chat else "text_completion"

            def chunk(i, piece, finish=None, first=False):
                if chat:
                    delta = {"role": "assistant", "content": piece} if first else \
                        ({"content": piece} if piece else {})
                    entry = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                else:
                    entry = {"index": i, "text": piece, "logprobs": None, "finish_reason": finish}
                return "data: " + json.dumps({"id": rid, "object": kind, "created": stamp, "model": model_name,
                                              "choices": [entry]}) + "\n\n"

            async def events():
                try:
                    if chat:
                        for i in range(len(choices)):
                            yield chunk(i, "", first=True)
                    while any(c.finish_reason is None for c in choices):
                        i, ev = await queue.get()
                        piece = take(i, ev)
                        finish = choices[i].finish_reason
                        if piece or finish:
                            yield chunk(i, piece, finish)
                    if params.include_usage:
                        yield "data: " + json.dumps({"id": rid, "object": kind, "created": stamp,
                                                     "model": model_name, "choices": [],
                                                     "usage": usage(prompt_ids, choices)}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    cancel_unfinished()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while any(c.finish_reason is None for c in choices):
                try:
                    i, ev = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return PlainTextResponse("", status_code=499)
                    continue
                take(i, ev)
        finally:
            cancel_unfinished()
        out = []
        for i, c in enumerate(choices):
            lp = logprobs_of(c, chat) if params.logprobs else None
            if chat:
                out.append({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish_reason})
            else:
                out.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": stamp, "model": model_name, "choices": out,
                             "usage": usage(prompt_ids, choices)})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, await read_body(request), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, await read_body(request), chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "microgpt", "context_length": context}]}

    @app.get("/health")
    async def health():
        if engine.error:
            return JSONResponse({"status": "error", "error": engine.error}, status_code=503)
        return {"status": "ok" if engine.accepting else "draining"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(engine.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return HTMLResponse(f.read().replace("{{MODEL}}", model_name))

    return app
