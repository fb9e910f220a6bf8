"""The llama.cpp side of bench_quantize.py, in a process of its own.

Why a process: importing microgpt sets OMP_WAIT_POLICY=PASSIVE for the whole process
(backends/cpu_lib.py), and llama-cpp-python's CPU build loads the same libgomp, so in the
bench's process llama.cpp would run under our OpenMP policy rather than its own default. Here it
gets the environment the bench was started with.

    python benchmarks/llama_worker.py MODEL.gguf N_CTX THREADS

Reads one JSON request per line on stdin, answers one JSON line on stdout:
    {"op": "policy"}                     -> {"policy": OMP_WAIT_POLICY or "unset"}
    {"op": "decode", "prompt": [...], "n": N}  -> {"tokens": [N greedy ids]}
    {"op": "logits", "prompt": [...]}    -> {"logits": the prompt's last-position logits}
The decode loop is the bench's own: eval the prompt, then argmax of the last logits and eval
of that one token, N times (no sampler), so both sides do the same work per token.
"""
import json
import os
import sys

import numpy as np


def main():
    path, n_ctx, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import llama_cpp
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "policy":
            answer = {"policy": os.environ.get("OMP_WAIT_POLICY", "unset")}
        elif request["op"] == "decode":
            llm.reset()
            llm.eval(request["prompt"])
            tokens = []
            while True:
                tokens.append(int(np.argmax(last_logits())))
                if len(tokens) == request["n"]:
                    break
                llm.eval([tokens[-1]])
            answer = {"tokens": tokens}
        elif request["op"] == "logits":
            llm.reset()
            llm.eval(request["prompt"])
            answer = {"logits": last_logits().astype(float).tolist()}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
