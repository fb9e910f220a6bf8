"""Serving: continuous batching (scheduler.py) on a background thread (engine_loop.py) behind
an OpenAI-compatible HTTP API and a chat page (app.py, page.html); `microgpt serve RUN`."""
