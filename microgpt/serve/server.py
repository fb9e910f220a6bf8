"""`microgpt serve RUN`: load a model, build the app, run uvicorn until SIGTERM/SIGINT.

Binds 127.0.0.1 unless --host says otherwise: a model server on every interface is a choice
to make on purpose. On SIGTERM uvicorn stops taking connections and lets the in-flight
requests finish (streams included), then the app's shutdown drains the engine, and the
process exits 0.
"""
import signal
import sys
import threading

from ..errors import ConfigError


def _require_serve_extra():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"serving needs the serve extra ({exc.name} is missing): "
                          f"pip install -e '.[serve]'") from None


def build_app(run_dir, api_key=None, max_batch=32, max_queue=64, block_size=16, num_blocks=None,
              max_step_tokens=256, model_name=None, device="cpu"):
    _require_serve_extra()
    import os

    from ..train.checkpoint import load_model, resolve
    from .app import create_app
    path = resolve(run_dir)
    model, tokenizer, _ = load_model(path, device)
    name = model_name or os.path.basename(os.path.normpath(run_dir)) or "microgpt"
    return create_app(model.eval(), tokenizer, name, api_key, max_batch, max_queue, num_blocks,
                      block_size, max_step_tokens)


def serve(run_dir, host="127.0.0.1", port=8000, api_key=None, max_batch=32, max_queue=64,
          block_size=16, num_blocks=None, max_step_tokens=256, model_name=None, device="cpu"):
    app = build_app(run_dir, api_key, max_batch, max_queue, block_size, num_blocks, max_step_tokens,
                    model_name, device)
    import uvicorn
    print(f"microgpt serve: http://{host}:{port}/ (model {app.state.model_name}); Ctrl-C or SIGTERM stops it",
          file=sys.stderr, flush=True)
    # uvicorn replaces the SIGTERM handler while it runs and, once it has drained, re-raises the
    # signal to the handler it found: with the default one the process would die by the signal
    # (status -15) after a clean shutdown. A handler that does nothing makes the drain exit 0.
    # (Signal handlers belong to the main thread; elsewhere uvicorn installs none either.)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None) if main else None
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=120)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return 0
