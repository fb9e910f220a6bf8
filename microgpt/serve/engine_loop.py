"""The scheduler on a thread of its own, fed by the HTTP server's event loop; and the metrics.

    loop = EngineLoop(Scheduler(model), max_queue=64)
    loop.start()
    loop.submit(request, on_event)     # on_event(TokenEvent) is called on the engine thread
    loop.cancel(request_id)            # thread-safe; the blocks are free after the next step
    loop.drain(); loop.stop()

Why a thread: a step is NumPy and C kernels, which release the GIL, so the asyncio loop stays
responsive (new requests, SSE writes, /health) while the engine computes. All scheduler state
is touched by the engine thread only: submit and cancel queue commands that the thread applies
between steps, so no lock is held across a forward pass.

Back-pressure: at most max_queue requests wait for a batch slot; submit raises QueueFull past
that (the server answers 429 with Retry-After).

Metrics (Prometheus text, /metrics): queue depth, running sequences, KV blocks used and their
peak, generated tokens and tokens/s over the last 10 s, requests by outcome, preemptions, and
histograms of TTFT (submit -> first token) and TPOT (mean time per output token after the
first) in seconds.
"""
import threading
import time
from collections import deque

from ..errors import MicrogptError

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class QueueFull(Exception):
    pass


class Histogram:
    def __init__(self, buckets=BUCKETS):
        self.buckets, self.counts = buckets, [0] * len(buckets)
        self.total, self.count = 0.0, 0

    def observe(self, value):
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name):
        out = [f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{edge}"}} {c}' for edge, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total:.6f}",
                f"{name}_count {self.count}"]
        return out


class EngineLoop:
    def __init__(self, scheduler, max_queue=64):
        self.scheduler, self.max_queue = scheduler, max_queue
        self._commands = deque()
        self._wake = threading.Condition()
        self._callbacks = {}
        self._timing = {}                       # request id -> [submitted, first token, tokens]
        self._running = False
        self._thread = None
        self.accepting = True
        self.ttft, self.tpot = Histogram(), Histogram()
        self.outcomes = {"finished": 0, "cancelled": 0, "failed": 0}
        self._recent = deque()                  # (time, tokens) of recent steps, for tokens/s
        self.error = None

    # --- from any thread --------------------------------------------------------------------------

    def start(self):
        self._running = True
        self._thread = threading.Thread(target=self._run, name="microgpt-engine", daemon=True)
        self._thread.start()

    def pending(self):
        """Requests submitted and not yet running (queued commands included)."""
        return self.scheduler.num_waiting + sum(1 for c in list(self._commands) if c[0] == "add")

    def submit(self, request, on_event):
        if not self.accepting:
            raise QueueFull("the server is shutting down")
        with self._wake:
            if self.pending() >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting")
            self._commands.append(("add", request, on_event))
            self._wake.notify()

    def cancel(self, request_id):
        with self._wake:
            self._commands.append(("cancel", request_id, None))
            self._wake.notify()

    def idle(self):
        return not self._commands and not self.scheduler.has_work()

    def drain(self, timeout=60.0):
        """Stop accepting; wait (bounded) until every request has finished."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        while not self.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.idle()

    def stop(self):
        self._running = False
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the engine thread -----------------------------------------------------------------------

    def _apply_commands(self):
        while self._commands:
            kind, a, b = self._commands.popleft()
            if kind == "add":
                try:
                    self.scheduler.add(a)
                except MicrogptError as exc:         # refused (the server checked most before)
                    b(exc)
                    continue
                self._callbacks[a.request_id] = b
                self._timing[a.request_id] = [time.monotonic(), None, 0]
            elif self.scheduler.cancel(a) or a in self._callbacks:
                self._callbacks.pop(a, None)
                self._timing.pop(a, None)
                self.outcomes["cancelled"] += 1

    def _run(self):
        while self._running:
            with self._wake:
                while self._running and not self._commands and not self.scheduler.has_work():
                    self._wake.wait(timeout=0.5)
                self._apply_commands()
            if not self.scheduler.has_work():
                continue
            try:
                events = self.scheduler.step()
            except Exception as exc:  # noqa: BLE001 - a bug: fail these requests, keep serving, report at /health
                self.error = repr(exc)
                for rid, cb in list(self._callbacks.items()):
                    self.scheduler.cancel(rid)
                    cb(exc)
                    self.outcomes["failed"] += 1
                self._callbacks.clear()
                continue
            now = time.monotonic()
            self._recent.append((now, len(events)))
            while self._recent and self._recent[0][0] < now - 10:
                self._recent.popleft()
            for ev in events:
                timing = self._timing.get(ev.request_id)
                if timing is not None:
                    if timing[1] is None:
                        timing[1] = now
                        self.ttft.observe(now - timing[0])
                    timing[2] += 1
                cb = self._callbacks.get(ev.request_id)
                if ev.finish_reason is not None:
                    self._callbacks.pop(ev.request_id, None)
                    self._timing.pop(ev.request_id, None)
                    self.outcomes["finished"] += 1
                    if timing is not None and timing[2] > 1:
                        self.tpot.observe((now - timing[1]) / (timing[2] - 1))
                if cb is not None:
                    cb(ev)

    # --- metrics --------------------------------------------------------------------------------

    def tokens_per_second(self):
        recent = list(self._recent)
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return sum(n for _, n in recent[1:]) / span if span > 0 else 0.0

    def metrics_text(self):
        s, pool = self.scheduler, self.scheduler.cache.pool
        lines = [
            "# TYPE microgpt_queue_depth gauge", f"microgpt_queue_depth {self.pending()}",
            "# TYPE microgpt_running_sequences gauge", f"microgpt_running_sequences {s.num_running}",
            "# TYPE microgpt_kv_blocks_used gauge", f"microgpt_kv_blocks_used {pool.num_used}",
            "# TYPE microgpt_kv_blocks_total gauge", f"microgpt_kv_blocks_total {pool.num_blocks}",
            "# TYPE microgpt_kv_blocks_peak gauge", f"microgpt_kv_blocks_peak {pool.peak_used}",
            "# TYPE microgpt_kv_cache_bytes_peak gauge",
            f"microgpt_kv_cache_bytes_peak {pool.peak_used * s.cache.bytes_per_block}",
            "# TYPE microgpt_generated_tokens_total counter", f"microgpt_generated_tokens_total {s.tokens_generated}",
            "# TYPE microgpt_tokens_per_second gauge", f"microgpt_tokens_per_second {self.tokens_per_second():.3f}",
            "# TYPE microgpt_preemptions_total counter", f"microgpt_preemptions_total {s.preemptions}",
            "# TYPE microgpt_requests_total counter",
        ]
        lines += [f'microgpt_requests_total{{outcome="{k}"}} {v}' for k, v in self.outcomes.items()]
        lines += self.ttft.lines("microgpt_ttft_seconds") + self.tpot.lines("microgpt_tpot_seconds")
        return "\n".join(lines) + "\n"
