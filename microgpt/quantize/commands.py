"""The compression commands behind the CLI: `microgpt quantize` and `microgpt export-gguf`.

    microgpt quantize RUN --scheme int8|int4 [--group 32] [--head fp32|int8|same] [--out DIR]
        RUN's newest checkpoint, its Linear layers quantized (model.py; the LM head by default
        int8 group 32 in int4 and int8 models, --head fp32 keeps it float32), written to DIR
        (default: RUN-int8 / RUN-int4-g32 beside it); `generate DIR` runs it.
    microgpt export-gguf RUN --type f32|f16|q8_0|q4_0 --out FILE
        the model (float, or quantized with matching Q8_0 / Q4_0 layers) as a GGUF file.
DIR must not exist yet, so nothing is overwritten; a bad request fails before anything is written.
"""
import os

from ..errors import ConfigError


def run_quantize(args):
    from ..train.checkpoint import load_model, resolve
    from .model import quantize_model, save_quantized, weight_bytes
    source = resolve(args.run_dir)
    out = args.out or (os.path.normpath(args.run_dir) + f"-{args.scheme}"
                       + (f"-g{args.group}" if args.group else ""))
    if os.path.exists(out):
        raise ConfigError(f"--out {out} exists; give a new directory")
    model, _, _ = load_model(source)
    config = quantize_model(model, args.scheme, args.group, args.head)
    save_quantized(model, out, source)
    held, full = weight_bytes(model)
    print(f"{len(config['layers'])} Linear layers -> {args.scheme}"
          + (f" group {args.group}" if args.group else "")
          + f" (LM head {config['head'] or 'fp32'})"
          + f": {full / 2**20:.1f} -> {held / 2**20:.1f} MiB ({full / held:.2f}x smaller); wrote {out}")
    return 0


def run_export_gguf(args):
    from ..interop.gguf_export import export_gguf
    from ..train.checkpoint import load_model
    if os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a directory; give the path of the .gguf file to write")
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    model, tokenizer, _ = load_model(args.run_dir)
    export_gguf(model, tokenizer, args.out, args.type)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB, {args.type})")
    return 0
