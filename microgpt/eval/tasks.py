"""Evaluation tasks as data: where the examples are, what format they are in, how many shots.

A task file (TOML or JSON) lists tasks; every key but `name`, `format` and `file` has a default:

    [[task]]
    name = "mmlu"                 # the report's name
    format = "mmlu_csv"           # mmlu_csv | choice_jsonl | gsm8k_jsonl | gen_jsonl
    file = "mmlu/test"            # a file, or a directory of them (MMLU: one CSV per subject)
    dev = "mmlu/dev"              # few-shot pool: the first `shots` examples (lm-eval's first_n)
    shots = 5
    fields = {context = "ctx", choices = "endings", label = "label"}   # choice_jsonl's keys
    metric = "exact"              # gen_jsonl: exact | contains | bleu | chrf | rouge
    max_new_tokens = 256          # generative tasks
    stop = ["\\n\\n"]              # generative tasks, on top of the format's own
    temperature = 0.0             # 0: greedy; > 0: sampled with `seed`
    limit = 0                     # 0: every example

On the command line `--tasks FORMAT=PATH` is a task with the defaults (`mmlu_csv=mmlu/test`).

The formats, as the public sets ship them, and the prompts lm-eval builds from them
(context = description + sum over shots of (question + " " + answer + "\\n\\n") + question;
lm_eval/api/task.py, ConfigurableTask.fewshot_context and build_qa_turn):

  mmlu_csv      Hendrycks et al.'s CSVs: no header; question, A, B, C, D, answer letter.
                The subject is the file name without _test/_dev/_val (`astronomy_test.csv`);
                the dev pool of a directory `.../test` is `.../dev/<subject>_dev.csv` when
                `dev` is not given. Prompt (lm-eval's mmlu default template):
                "The following are multiple choice questions (with answers) about
                astronomy.\\n\\n" + shots + "Q\\nA. a\\nB. b\\nC. c\\nD. d\\nAnswer:",
                choices " A" .. " D".
  choice_jsonl  one JSON object per line with a context, a list of choices and the index of
                the right one (ARC, HellaSwag, PIQA, ... once flattened to these keys, or
                named by `fields`); the label may be an int, a digit string or a letter.
                Prompt: the context; choices " " + choice.
  gsm8k_jsonl   {"question", "answer"} with the answer ending in "#### N". Prompt
                "Question: Q\\nAnswer:", shots "Question: Q\\nAnswer: <full answer>"; greedy
                decoding until "Question:", "</s>", "<|im_end|>" or end of text.
  gen_jsonl     {"prompt", "answer"} (answer: a string or a list of accepted strings);
                `metric` decides how the completion is judged: exact / contains per
                example, rouge per example (stemmed), bleu / chrf over the whole corpus
                with every accepted answer a reference.

Where the real sets go (download them yourself; microgpt ships only tiny look-alikes in
tests/fixtures/eval/): MMLU's data.tar from the Hendrycks repository unpacks to
data/test/*.csv and data/dev/*.csv -> `mmlu_csv=data/test`; GSM8K's test.jsonl and
train.jsonl (openai/grade-school-math) -> file test.jsonl, dev train.jsonl; HellaSwag's
hellaswag_val.jsonl -> choice_jsonl with fields {context = "ctx", choices = "endings",
label = "label"}.
"""
import csv
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import MicrogptError

FORMATS = ("mmlu_csv", "choice_jsonl", "gsm8k_jsonl", "gen_jsonl")
GEN_METRICS = ("exact", "contains", "bleu", "chrf", "rouge")
CORPUS_METRICS = ("bleu", "chrf")       # one score of the whole corpus, not a mean of examples
LETTERS = "ABCDEFGHIJ"
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")


class TaskError(MicrogptError, ValueError):
    """A task file or an example file that cannot be read as its format says."""


@dataclass
class Example:
    """One evaluation example, whatever its format: `question` is the text the prompt is built
    from (for shots, followed by the answer), `choices` and `label` for multiple choice,
    `target` for generative tasks (the reference text(s))."""
    question: str
    choices: List[str] = field(default_factory=list)
    label: Optional[int] = None
    target: List[str] = field(default_factory=list)
    subject: str = ""
    source: str = ""                 # file:line, for messages and the report


@dataclass
class Task:
    name: str
    format: str
    file: str
    dev: Optional[str] = None
    shots: int = 0
    fields: Dict[str, str] = field(default_factory=dict)
    metric: str = "exact"
    max_new_tokens: int = 256
    stop: List[str] = field(default_factory=list)
    temperature: float = 0.0      # generative tasks: 0 = greedy (lm-eval's do_sample: false)
    seed: int = 0                 # the sampling seed when temperature > 0
    limit: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise TaskError(f"task {self.name!r}: format {self.format!r} is not one of "
                            f"{', '.join(FORMATS)}")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise TaskError(f"task {self.name!r}: shots must be an integer >= 0")
        if self.format == "gen_jsonl" and self.metric not in GEN_METRICS:
            raise TaskError(f"task {self.name!r}: metric {self.metric!r} is not one of "
                            f"{', '.join(GEN_METRICS)}")
        if not os.path.exists(self.file):
            raise TaskError(f"task {self.name!r}: {self.file} does not exist")

    @property
    def kind(self):
        return "choice" if self.format in ("mmlu_csv", "choice_jsonl") else "generate"


def load_task_file(path) -> List[Task]:
    """The [[task]] tables of a TOML file or the "task" list of a JSON file; relative paths
    are relative to the file."""
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: not a valid task file ({exc})") from None
    entries = data.get("task") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise TaskError(f"{path}: no tasks; write one [[task]] table (TOML) or a \"task\" list "
                        f"(JSON) with name, format and file")
    base = os.path.dirname(os.path.abspath(path))
    tasks = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not {"name", "format", "file"} <= set(entry):
            raise TaskError(f"{path}: task {n} needs name, format and file")
        unknown = set(entry) - set(Task.__dataclass_fields__)
        if unknown:
            raise TaskError(f"{path}: task {entry['name']!r} has unknown keys "
                            f"{', '.join(sorted(unknown))}")
        entry = dict(entry)
        for key in ("file", "dev"):
            if entry.get(key):
                entry[key] = os.path.join(base, entry[key])
        tasks.append(Task(**entry))
    return tasks


def parse_task_argument(text) -> List[Task]:
    """`--tasks` value: a .toml/.json task file or FORMAT=PATH."""
    if "=" in text and text.split("=", 1)[0] in FORMATS:
        fmt, path = text.split("=", 1)
        name = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or fmt
        return [Task(name=name, format=fmt, file=path)]
    if os.path.isfile(text) and text.endswith((".toml", ".json")):
        return load_task_file(text)
    raise TaskError(f"--tasks {text}: give a task file (.toml/.json) or FORMAT=PATH with FORMAT "
                    f"one of {', '.join(FORMATS)}")


# --- reading the formats ------------------------------------------------------------------------

def _files(path, suffix):
    if os.path.isdir(path):
        found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(suffix))
        if not found:
            raise TaskError(f"{path}: no *{suffix} files in this directory")
        return found
    return [path]


def _subject(path):
    name = os.path.splitext(os.path.basename(path))[0]
    for tail in ("_test", "_dev", "_val"):
        if name.endswith(tail):
            return name[:-len(tail)]
    return name


def read_mmlu_csv(path) -> List[Example]:
    out = []
    for file in _files(path, ".csv"):
        with open(file, encoding="utf-8", newline="") as f:
            for line, row in enumerate(csv.reader(f), 1):
                where = f"{file}:{line}"
                if len(row) != 6:
                    raise TaskError(f"{where}: expected 6 columns (question, A, B, C, D, "
                                    f"answer), found {len(row)}")
                answer = row[5].strip().upper()
                if answer not in LETTERS[:4]:
                    raise TaskError(f"{where}: answer {row[5]!r} is not one of A, B, C, D")
                out.append(Example(row[0], row[1:5], LETTERS.index(answer),
                                   subject=_subject(file), source=where))
    return out


def _jsonl(path):
    for file in _files(path, ".jsonl"):
        with open(file, encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    raise TaskError(f"{file}:{line}: not a JSON object ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise TaskError(f"{file}:{line}: expected a JSON object, got "
                                    f"{type(obj).__name__}")
                yield f"{file}:{line}", obj


def _get(obj, key, where):
    if key not in obj:
        raise TaskError(f"{where}: no {key!r} field (the task's fields name the keys)")
    return obj[key]


def read_choice_jsonl(path, fields) -> List[Example]:
    keys = {"context": "context", "choices": "choices", "label": "label", **fields}
    out = []
    for where, obj in _jsonl(path):
        context, choices = _get(obj, keys["context"], where), _get(obj, keys["choices"], where)
        label = _get(obj, keys["label"], where)
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise TaskError(f"{where}: choices must be a non-empty list of strings")
        if isinstance(label, str):
            label = label.strip()
            label = int(label) if label.isdigit() else (LETTERS.index(label.upper())
                                                        if len(label) == 1 and label.isalpha() else label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise TaskError(f"{where}: label {obj[keys['label']]!r} does not name one of the "
                            f"{len(choices)} choices")
        out.append(Example(str(context), choices, label, subject=str(obj.get("subject", "")),
                           source=where))
    return out


def read_gsm8k_jsonl(path) -> List[Example]:
    out = []
    for where, obj in _jsonl(path):
        question, answer = _get(obj, "question", where), _get(obj, "answer", where)
        out.append(Example(str(question), target=[str(answer)], source=where))
    return out


def read_gen_jsonl(path, fields) -> List[Example]:
    keys = {"prompt": "prompt", "answer": "answer", **fields}
    out = []
    for where, obj in _jsonl(path):
        answer = _get(obj, keys["answer"], where)
        answers = answer if isinstance(answer, list) else [answer]
        out.append(Example(str(_get(obj, keys["prompt"], where)), target=[str(a) for a in answers],
                           source=where))
    return out


def read_examples(task, path) -> List[Example]:
    if task.format == "mmlu_csv":
        return read_mmlu_csv(path)
    if task.format == "choice_jsonl":
        return read_choice_jsonl(path, task.fields)
    if task.format == "gsm8k_jsonl":
        return read_gsm8k_jsonl(path)
    return read_gen_jsonl(path, task.fields)


# --- prompts ---------------------------------------------------------------------------------------

def _question_text(task, ex):
    if task.format == "mmlu_csv":
        lines = [ex.question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(ex.choices)]
        return "\n".join(lines) + "\nAnswer:"
    if task.format == "gsm8k_jsonl":
        return f"Question: {ex.question}\nAnswer:"
    return ex.question


def _answer_text(task, ex):
    if task.format == "mmlu_csv":
        return LETTERS[ex.label]
    if task.kind == "choice":
        return ex.choices[ex.label]
    return ex.target[0]


def choice_texts(task, ex):
    """The continuations scored for each choice, without the leading delimiter."""
    return list(LETTERS[:len(ex.choices)]) if task.format == "mmlu_csv" else ex.choices


def description(task, ex):
    if task.format == "mmlu_csv":
        return (f"The following are multiple choice questions (with answers) about "
                f"{ex.subject.replace('_', ' ')}.\n\n")
    return ""


def build_context(task, ex, shots: List[Example]):
    """description + (question + " " + answer + "\\n\\n") per shot + question."""
    parts = [description(task, ex)]
    for shot in shots:
        parts.append(_question_text(task, shot) + " " + _answer_text(task, shot) + "\n\n")
    parts.append(_question_text(task, ex))
    return "".join(parts)


def shot_pool(task, examples):
    """{subject: [Example]} of the few-shot pool (MMLU: each subject its own dev examples)."""
    if task.shots == 0:
        return {}
    dev = task.dev
    if dev is None and task.format == "mmlu_csv" and os.path.isdir(task.file):
        guess = os.path.join(os.path.dirname(os.path.abspath(task.file.rstrip("/"))), "dev")
        dev = guess if os.path.isdir(guess) else None
    if dev is None:
        raise TaskError(f"task {task.name!r}: {task.shots} shots need a dev file or directory "
                        f"(the task's `dev`)")
    pool = {}
    for ex in read_examples(task, dev):
        pool.setdefault(ex.subject if task.format == "mmlu_csv" else "", []).append(ex)
    return pool


def shots_for(task, pool, ex):
    examples = pool.get(ex.subject if task.format == "mmlu_csv" else "", [])
    if len(examples) < task.shots:
        raise TaskError(f"task {task.name!r}: {task.shots} shots asked, the dev pool for "
                        f"{ex.subject or 'this task'!r} has {len(examples)}")
    return examples[:task.shots]
