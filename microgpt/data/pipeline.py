"""The cleaning pipeline: documents in, cleaned documents and a report out.

    microgpt data clean raw/ dump.jsonl.gz -o clean.jsonl.gz [--config clean.toml]
    report = clean_corpus(["raw/"], "clean.jsonl.gz", CleanConfig())

Stages, per document, in this order (each a plain function of one text):
  1. normalize          clean.normalize: NFC, controls, whitespace, mojibake
  2. pii                pii.scrub: typed placeholders
  3. boilerplate_lines  filters.strip_boilerplate: cookie / JavaScript banner lines
  4. quality rules      filters.check_quality: the first failing named rule drops the document
  5. exact_dup          dedup.ExactDedup: 64-bit BLAKE2b of the text after stages 1-3
  6. near_dup           dedup.NearDedup: MinHash + LSH, in batches of `batch_docs`
Scrubbing comes before the rules and dedup so that every decision is taken on the text that
is written out; with each stage idempotent, cleaning the output again changes nothing.

Output: JSONL, gzipped when the name ends in .gz, one {"id", "text", "source"} per kept
document in input order; `id` is the 16-hex-digit BLAKE2b digest of the text (unique while
exact dedup is on; with it off, "-<n>" is appended). The file is written to a hidden
temporary in the same directory, fsynced, then renamed over the target, so a crash never
leaves half a file; inputs are only read. Memory is bounded by one batch plus the dedup
index, whose size is in the report. Deterministic: same input, config and seed give the
same bytes (the gzip header's timestamp is fixed at 0).

The report (JSON next to the output, and `Report.summary()` printed by the CLI) counts, per
rule, documents and UTF-8 bytes removed with a few examples, and per modifying stage the
documents changed and bytes removed.
"""
import dataclasses
import gzip
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Tuple

from ..errors import ConfigError
from ..fileio import atomic_write
from .clean import normalize
from .dedup import DedupConfig, ExactDedup, NearDedup
from .filters import FilterConfig, check_quality, strip_boilerplate
from .pii import scrub
from .sources import Document, SourceStats, iter_documents

_EXAMPLE_CHARS = 240


@dataclass
class CleanConfig:
    """Everything `microgpt data clean` can be told; TOML tables [filters] and [dedup]."""
    normalize: bool = True
    pii: bool = True
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    text_field: str = "text"
    on_bad_line: str = "raise"
    batch_docs: int = 256
    examples: int = 3
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.filters, dict):
            self.filters = _build(FilterConfig, self.filters, "filters")
        if isinstance(self.dedup, dict):
            self.dedup = _build(DedupConfig, self.dedup, "dedup")
        if self.batch_docs < 1 or self.examples < 0:
            raise ConfigError("batch_docs must be >= 1 and examples >= 0")


def _build(cls, values, where):
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of settings, got {values!r}")
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)}
    unknown = set(values) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown keys in [{where}]: {sorted(unknown)}; known: {sorted(defaults)}")
    for key, value in values.items():
        _check_type(f"{where}.{key}" if where != "top level" else key, value, defaults[key])
    return cls(**values)


def _check_type(name, value, default):
    """ConfigError unless `value` has the type of the field's default (ints pass for floats,
    floats must be finite, a nested config must be a table, a tuple a list)."""
    if dataclasses.is_dataclass(default):
        ok, what = isinstance(value, (dict, type(default))), "a table"
    elif isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    elif isinstance(default, tuple):
        ok, what = isinstance(value, (list, tuple)), "a list"
        if ok and default and not isinstance(default[0], str):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                     for v in value)
            what = "a list of finite numbers"
        elif ok:
            ok, what = all(isinstance(v, str) for v in value), "a list of strings"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    else:
        ok, what = True, ""
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {value!r}")


def load_config(path: str, **overrides) -> CleanConfig:
    """A CleanConfig from a TOML file; keyword overrides (e.g. from CLI flags) win. Any
    problem with the file is a ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    values.update(overrides)
    try:
        return _build(CleanConfig, values, "top level")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class Report:
    """What the pipeline did; `as_dict()` is the JSON report, `summary()` the readable one."""
    examples: int = 3
    input_docs: int = 0
    input_bytes: int = 0
    output_docs: int = 0
    output_bytes: int = 0
    removed: dict = field(default_factory=dict)     # rule -> {docs, bytes, examples}
    modified: dict = field(default_factory=dict)    # stage -> {docs, bytes}
    pii: dict = field(default_factory=dict)         # kind -> replacements
    index: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    seconds: float = 0.0

    def drop(self, rule: str, doc: Document, text: str, reason: str):
        entry = self.removed.setdefault(rule, {"docs": 0, "bytes": 0, "examples": []})
        entry["docs"] += 1
        entry["bytes"] += len(text.encode("utf-8", "surrogatepass"))
        if len(entry["examples"]) < self.examples:
            entry["examples"].append({"source": doc.source, "reason": reason,
                                      "text": text[:_EXAMPLE_CHARS]})

    def change(self, stage: str, before: str, after: str):
        if before != after:
            entry = self.modified.setdefault(stage, {"docs": 0, "bytes": 0})
            entry["docs"] += 1
            entry["bytes"] += len(before.encode("utf-8", "surrogatepass")) - \
                len(after.encode("utf-8", "surrogatepass"))

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["mb_per_s"] = self.input_bytes / 1e6 / self.seconds if self.seconds else None
        return out

    def summary(self) -> str:
        lines = [f"input  {self.input_docs:>10} docs {self.input_bytes / 1e6:>10.2f} MB",
                 f"output {self.output_docs:>10} docs {self.output_bytes / 1e6:>10.2f} MB"
                 f"   ({self.seconds:.1f} s, "
                 f"{self.input_bytes / 1e6 / max(self.seconds, 1e-9):.2f} MB/s)",
                 "removed by rule:"]
        for rule, e in sorted(self.removed.items(), key=lambda kv: -kv[1]["docs"]):
            lines.append(f"  {rule:<18} {e['docs']:>8} docs {_size(e['bytes']):>10}"
                         + (f"   e.g. {e['examples'][0]['source']}: "
                            f"{e['examples'][0]['reason']}" if e["examples"] else ""))
        for stage, e in sorted(self.modified.items()):
            lines.append(f"changed by {stage:<18} {e['docs']:>8} docs "
                         f"{_size(e['bytes']):>10} removed")
        if self.pii:
            lines.append("pii replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(self.pii.items())))
        if self.index:
            lines.append("dedup index: " + ", ".join(f"{k} {v}" for k, v in self.index.items()))
        return "\n".join(lines)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


def clean_documents(docs: Iterable[Document], cfg: CleanConfig,
                    report: Optional[Report] = None) -> Iterator[Tuple[str, Document]]:
    """Yield (cleaned text, original document) for every document kept, in input order."""
    report = report if report is not None else Report(examples=cfg.examples)
    exact = ExactDedup() if cfg.dedup.exact else None
    near = NearDedup(cfg.dedup) if cfg.dedup.near else None
    pending = []
    for doc in docs:
        report.input_docs += 1
        report.input_bytes += len(doc.text.encode("utf-8", "surrogatepass"))
        text = _transform(doc, cfg, report)
        if text is None:
            continue
        if exact is not None and exact.seen(text):
            report.drop("exact_dup", doc, text, "identical to an earlier document")
            continue
        pending.append((text, doc))
        if near is None or len(pending) >= cfg.batch_docs:
            yield from _flush(pending, near, report)
            pending = []
    yield from _flush(pending, near, report)
    if exact is not None:
        report.index["exact_entries"] = len(exact)
        report.index["exact_bytes"] = exact.index_bytes()
    if near is not None:
        report.index.update(near_entries=len(near), near_bytes=near.index_bytes(),
                            bands=near.bands, rows=near.rows, num_perm=cfg.dedup.num_perm)


def _transform(doc: Document, cfg: CleanConfig, report: Report) -> Optional[str]:
    """Stages 1-4 on one document: the text to keep, or None (and the report says why)."""
    text = doc.text
    if cfg.normalize:
        text, before = normalize(text), text
        report.change("normalize", before, text)
    if cfg.pii:
        (text, counts), before = scrub(text), text
        for kind, n in counts.items():
            report.pii[kind] = report.pii.get(kind, 0) + n
        report.change("pii", before, text)
    (text, removed), before = strip_boilerplate(text, cfg.filters), text
    if removed:
        report.change("boilerplate_lines", before, text)
    if not text.strip():
        report.drop("empty", doc, text, "no text left")
        return None
    verdict = check_quality(text, cfg.filters)
    if verdict is not None:
        report.drop(verdict[0], doc, text, verdict[1])
        return None
    return text


def _flush(pending, near, report):
    twins = near.check_batch([t for t, _ in pending]) if near is not None and pending else \
        [None] * len(pending)
    for (text, doc), twin in zip(pending, twins):
        if twin is not None:
            report.drop("near_dup", doc, text, f"near-duplicate of kept document #{twin}")
        else:
            yield text, doc


def clean_corpus(inputs, output: str, cfg: Optional[CleanConfig] = None,
                 report_path: Optional[str] = None) -> Report:
    """Clean every document under `inputs` into `output` (.jsonl or .jsonl.gz), atomically."""
    cfg = cfg if cfg is not None else CleanConfig()
    if not output.endswith((".jsonl", ".jsonl.gz")):
        raise ConfigError(f"output must end in .jsonl or .jsonl.gz, got {output!r}")
    input_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if any(os.path.abspath(os.fspath(p)) == os.path.abspath(output) for p in input_list):
        raise ConfigError(f"output {output!r} is also an input; inputs are never overwritten")
    report = Report(examples=cfg.examples)
    stats = SourceStats()
    start = time.perf_counter()
    if report_path is None:
        report_path = output[:-len(".jsonl.gz") if output.endswith(".gz") else -len(".jsonl")] \
            + ".report.json"
    docs = _skip_own_files(iter_documents(input_list, cfg.text_field, cfg.on_bad_line, stats),
                           (output, report_path))
    kept = clean_documents(_progress(docs, cfg.progress), cfg, report)
    _write_jsonl(output, _records(kept, report, cfg.dedup.exact))
    report.seconds = time.perf_counter() - start
    report.sources = {"files": stats.files, "skipped_binary": stats.skipped_binary,
                      "bad_lines": stats.bad_lines, "bad_examples": stats.bad_examples}
    _atomic_write(report_path, lambda f: f.write(
        json.dumps(report.as_dict(), indent=1, ensure_ascii=False).encode("utf-8")))
    return report


def _skip_own_files(docs, own):
    """Leave out an earlier output or report found inside an input directory."""
    own = {os.path.abspath(p) for p in own}
    for doc in docs:
        path = doc.source if os.path.abspath(doc.source) in own else doc.source.rsplit(":", 1)[0]
        if os.path.abspath(path) not in own:
            yield doc


def _progress(docs, enabled):
    if not enabled:
        return docs
    from tqdm import tqdm
    return tqdm(docs, unit=" docs", desc="cleaning", mininterval=0.5)


def _records(kept, report, unique_ids):
    for n, (text, doc) in enumerate(kept):
        ident = f"{ExactDedup.digest(text):016x}" + ("" if unique_ids else f"-{n}")
        record = {"id": ident, "text": text, "source": doc.source}
        try:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:      # a lone surrogate (normalize off): JSON-escape it
            data = (json.dumps(record) + "\n").encode("ascii")
        report.output_docs += 1
        report.output_bytes += len(text.encode("utf-8", "surrogatepass"))
        yield data


def _write_jsonl(path, lines):
    def write(f):
        if path.endswith(".gz"):
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
                for line in lines:
                    gz.write(line)
        else:
            for line in lines:
                f.write(line)
    _atomic_write(path, write)


def _atomic_write(path, write):
    """write(binary file) into a temporary beside `path`, then rename it over `path`."""
    with atomic_write(path, "wb") as f:
        write(f)
