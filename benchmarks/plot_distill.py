"""Distillation's curves: val loss vs step of the student with the teacher and alone, one line per seed.

    python benchmarks/plot_distill.py --with RUN [RUN ...] --alone RUN [RUN ...] --out FILE.png

Each RUN is a `microgpt finetune distill` run directory; its metrics.jsonl holds a val_loss
line at every eval. Only val loss is drawn: the train loss of the distilled arm is the mixed
loss (KL and cross-entropy), not comparable with the other arm's cross-entropy. Same colour
for one seed in both arms, solid with the teacher, dashed alone
(benchmarks/results/compress.md uses it).
"""
import argparse
import json
import os
import sys

from microgpt.fileio import atomic_write


def val_curve(run_dir):
    """(steps, val losses) of a run, in step order."""
    points = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "val_loss" in row:
                points[row["step"]] = row["val_loss"]
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with", dest="with_teacher", nargs="+", required=True, help="runs with the teacher")
    parser.add_argument("--alone", nargs="+", required=True, help="the same seeds alone, in the same order")
    parser.add_argument("--labels", nargs="+", help="one label per seed (default: seed 0, 1, ...)")
    parser.add_argument("--title", default="student 2L x 48C: val loss with the teacher vs alone")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if len(args.with_teacher) != len(args.alone):
        parser.error("give as many --alone runs as --with runs (one pair per seed)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = args.labels or [f"seed {i}" for i in range(len(args.alone))]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (with_dir, alone_dir) in enumerate(zip(args.with_teacher, args.alone)):
        colour = f"C{i}"
        ax.plot(*val_curve(with_dir), color=colour, label=f"{labels[i]}, with the teacher")
        ax.plot(*val_curve(alone_dir), color=colour, linestyle="--", label=f"{labels[i]}, alone")
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lows = [min(val_curve(d)[1]) for d in args.with_teacher + args.alone]
    ax.set_ylim(min(lows) - 0.1, min(lows) + 2.0)       # the later steps, where the arms differ
    fig.tight_layout()
    with atomic_write(args.out, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
