"""The one benchmark harness: validate, warm up, repeat, report medians beside a peer.

Every benchmarks/bench_<thing>.py builds a list of Case objects — each pairs our callable
with a peer's (PyTorch, NumPy/OpenBLAS, tiktoken ...) on the same inputs — and calls
`run_cases`. The harness

  1. runs `check` once (if given) so a fast wrong answer is never reported,
  2. warms both sides up, then times `repeats` calls of each, alternating ours and peer
     so that drift in the machine's speed hits both,
  3. reports both sides' median and min-max, the figure in the case's unit, and the ratio
     ours/peer oriented so that > 1 means we are better,
  4. prints one table and, with --json FILE, writes one object per row plus the machine
     (CPU, versions, date in UTC, load average: the machine is shared, so say how busy it was).

Row fields: name, unit, ours, ours_min, ours_max, peer_name, peer, peer_min, peer_max, ratio
(ours/peer medians oriented as above); *_min <= *_max in the unit's own terms (for a rate,
ours_min is the slowest sample). benchmarks/report.py builds the README's table from these.

Usage in a benchmark:  args = harness.parse_args(); ... harness.run_cases(cases, args)
"""
import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Case:
    name: str                      # row label, e.g. "matmul 4096x384x1536 1 thread"
    ours: Callable[[], object]
    peer: Optional[Callable[[], object]]
    peer_name: str = "peer"
    unit: str = "ms"               # "ms" (lower is better) or a rate like "GFLOP/s", "tokens/s"
    work: float = 1.0              # rate = work / seconds when the unit is a rate
    check: Optional[Callable[[], None]] = None   # raises if ours disagrees with the peer
    repeats: int = 5
    warmup: int = 1


def parse_args(description="", extra=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute on 2 cores")
    parser.add_argument("--json", metavar="FILE", help="write machine-readable results to FILE")
    if extra:
        extra(parser)
    return parser.parse_args()


def machine():
    """What the numbers were measured on, and how busy it was (1/5/15-minute load average)."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average": load_average(),
    }
    for module in ("numpy", "torch", "tiktoken", "tokenizers", "datasketch"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    return info


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(case):
    """Median, min and max seconds of ours and of the peer, interleaved."""
    if case.check is not None:
        case.check()
    for _ in range(case.warmup):
        case.ours()
        if case.peer is not None:
            case.peer()
    ours, peer = [], []
    for _ in range(case.repeats):
        ours.append(_time(case.ours))
        if case.peer is not None:
            peer.append(_time(case.peer))
    return ours, peer


def _figure(case, seconds):
    if case.unit == "ms":
        return seconds * 1e3
    return case.work / seconds


def _spread(case, seconds):
    """(median, min, max) of the figure; min <= max whether the unit is a time or a rate."""
    figures = sorted(_figure(case, s) for s in seconds)
    return _figure(case, statistics.median(seconds)), figures[0], figures[-1]


def run_cases(cases, args, title=""):
    rows = []
    for case in cases:
        ours, peer = measure(case)
        median, low, high = _spread(case, ours)
        row = {
            "name": case.name, "unit": case.unit, "ours": median, "ours_min": low, "ours_max": high,
            "peer_name": case.peer_name, "peer": None, "peer_min": None, "peer_max": None, "ratio": None,
        }
        if peer:
            row["peer"], row["peer_min"], row["peer_max"] = _spread(case, peer)
            # ratio > 1 means we are better: time ratio is peer/ours, rate ratio is ours/peer.
            row["ratio"] = row["peer"] / row["ours"] if case.unit == "ms" else row["ours"] / row["peer"]
        rows.append(row)
        print(_format_row(row), flush=True)
    report(rows, args, title)
    return rows


def _format_row(row):
    peer = f"{row['peer']:>12.3f}" if row["peer"] is not None else f"{'-':>12}"
    ratio = f"{row['ratio']:>7.2f}x" if row["ratio"] is not None else f"{'-':>8}"
    peer_range = (f" {row['peer_min']:.3f}..{row['peer_max']:.3f}"
                  if row.get("peer_min") is not None and row.get("peer_max") is not None else "")
    return (f"{row['name']:<48} {row['ours']:>12.3f} {peer} {ratio}  {row['unit']}"
            f"  (ours {row['ours_min']:.3f}..{row['ours_max']:.3f}; peer {row['peer_name']}{peer_range})")


def report(rows, args, title=""):
    """Print the table (median figures; ratio > 1 means ours is better) and write JSON."""
    print()
    print(f"== {title} ==" if title else "== results ==")
    print(f"{'case':<48} {'ours':>12} {'peer':>12} {'ratio':>8}  unit")
    for row in rows:
        print(_format_row(row))
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, {info['date']}, "
          f"load average {info['load_average']}")
    if getattr(args, "json", None):
        from microgpt.fileio import write_json
        write_json(args.json, {"title": title, "machine": info,
                               "quick": bool(getattr(args, "quick", False)), "rows": rows})
