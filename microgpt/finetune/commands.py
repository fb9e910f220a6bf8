"""What `microgpt finetune sft`, `microgpt chat` and `microgpt data synth` run (cli.py parses).

The chat REPL: each line typed is a user turn; the model's reply streams as it is decoded
(temperature and top-k from the flags, stopping at <|im_end|>), and both join the history,
which is re-rendered with the chat template for every turn (the KV cache starts afresh
each turn: simple, and a turn's prefill is one forward pass). Commands: /reset (forget the
history, keep the system prompt), /system TEXT (set the system prompt and reset), /exit.
--message TEXT answers once and exits, for scripts.
"""
import sys

from ..errors import ConfigError

SFT_FLAGS = ("val_data", "lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "qlora",
             "qlora_group", "packing", "overflow")


def run_sft(args, overrides):
    """`microgpt finetune sft`: overrides are the TrainConfig flags given."""
    from ..train.config import make_config
    from .sft import SFTOptions, finetune, resume_sft
    if args.resume:
        summary = resume_sft(args.resume, {k: v for k, v in overrides.items()
                                           if k in ("eval_interval", "log_interval", "progress")})
    else:
        if not args.init_from or not overrides.get("data") or overrides.get("data") == "builtin":
            raise ConfigError("give --init-from MODEL (a run, checkpoint or Hugging Face directory) "
                              "and --data CHAT.jsonl")
        overrides = {**overrides, "init_from": args.init_from}
        config = make_config(args.preset, args.config, overrides)
        options = SFTOptions(**{k: getattr(args, k) for k in SFT_FLAGS})
        summary = finetune(config, options)
    print(f"\n{summary['steps']} steps; train loss {summary['train_loss']:.4f}, "
          f"val loss {summary['val_loss']:.4f}\ncheckpoint: {summary['checkpoint']}")
    for text in summary["samples"]:
        print(f"--- sample ---\n{text}")
    print(f"\nnext: microgpt chat {summary['run_dir']}")
    return 0


def run_chat(args, stdin=None, stdout=None):
    from ..inference.engine import Engine
    from ..inference.sampling import SamplingConfig
    from ..tokenizer import StreamDecoder
    from ..tokenizer.chat import encode_chat, stop_token_ids
    from .sft import load_chat_model
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tokenizer, _ = load_chat_model(args.run_dir, args.device)
    engine = Engine(model, tokenizer)
    stops = stop_token_ids(tokenizer)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k)
    system = args.system
    history = []

    def answer(text):
        history.append({"role": "user", "content": text})
        prompt = ([{"role": "system", "content": system}] if system else []) + history
        ids, _ = encode_chat(tokenizer, prompt, add_generation_prompt=True)
        room = min(args.max_new_tokens, engine.block_size - len(ids))
        if room <= 0:
            history.pop()
            raise ConfigError(f"the conversation fills the model's context ({engine.block_size} "
                              f"tokens); /reset to start again")
        decoder = StreamDecoder(tokenizer)

        def show(row, token):
            if token not in stops:
                stdout.write(decoder.feed(token))
                stdout.flush()
            return False
        done = engine.generate_ids([ids], room, sampling, args.seed, stops, show)[0]
        stdout.write(decoder.flush() + "\n")
        stdout.flush()
        reply = tokenizer.decode([i for i in done.ids if i not in stops])
        history.append({"role": "assistant", "content": reply})
        return reply

    if args.message is not None:
        answer(args.message)
        return 0
    stdout.write("chat: /reset, /system TEXT, /exit (Ctrl-D)\n")
    while True:
        stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        line = line.rstrip("\n")
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history.clear()
            stdout.write("(history cleared)\n")
        elif line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history.clear()
            stdout.write(f"(system prompt {'set' if system else 'cleared'}; history cleared)\n")
        elif line.strip():
            try:
                answer(line)
            except ConfigError as error:
                stdout.write(f"({error})\n")


def run_synth(args):
    from .synth import write_task
    train, held = write_task(args.task, args.out, args.train, args.eval, args.seed)
    print(f"{args.train} train examples -> {train}\n{args.eval} held-out examples -> {held}")
    return 0


def run_eval(args):
    """`microgpt finetune eval RUN --data HELD_OUT.jsonl`: greedy exact match of the last answer."""
    from ..fileio import write_json
    from .data import read_conversations
    from .evaluate import exact_match
    from .sft import load_chat_model
    model, tokenizer, _ = load_chat_model(args.run_dir, args.device)
    conversations, _ = read_conversations(args.data)
    if args.limit:
        conversations = conversations[:args.limit]
    accuracy, rows = exact_match(model, tokenizer, conversations, args.max_new_tokens)
    hits = sum(e.strip() == g.strip() for _, e, g in rows)
    print(f"exact match: {hits}/{len(rows)} = {accuracy:.3f}")
    for prompt, expected, got in rows[:args.show]:
        print(f"  {prompt[-1]['content']!r}: expected {expected!r}, got {got!r}")
    if args.json:
        write_json(args.json, {"run": args.run_dir, "data": args.data, "examples": len(rows),
                               "exact_match": accuracy, "hits": hits})
    return 0
