"""Writing files so that an interruption never leaves a broken one.

    with atomic_write("model.json", "w") as f:     # f is a temporary beside the target
        f.write(text)                              # on success: flush, fsync, rename over the
                                                   # target, fsync the directory
                                                   # on an exception: the temporary is removed

A reader therefore sees either the old file or the complete new one, never a torn write:
os.replace is atomic on POSIX, the file's fsync makes its bytes durable before the rename,
and the directory's fsync makes the rename itself durable. Every file microgpt writes
(shards, checkpoints, configs, tokenizers, metrics, cleaned data, plots) goes through here.
"""
import contextlib
import json
import os


def fsync_dir(path):
    """Make renames inside directory `path` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path):
    """A hidden name beside `path`, unique to this process, for writing before the rename."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Open a temporary beside `path` for writing; rename it over `path` only on success."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def write_json(path, obj):
    """Atomically write obj as indented JSON."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def json_kind(value):
    """How an error message names a JSON value that is not the object it should be."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds = {list: "an array", str: "a string", int: "a number", float: "a number", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def read_json_object(path, error, if_missing, if_damaged):
    """The JSON object in `path`. Every JSON file microgpt reads holds one object, so anything
    else -- missing, not UTF-8, not JSON, an array or a number -- raises `error` (a
    MicrogptError class) naming the file and saying what to do (`if_missing`, `if_damaged`),
    never a dict method failing later in a caller."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: missing{'; ' + if_missing if if_missing else ''}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}); {if_damaged}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: not a JSON object (it holds {json_kind(value)}); {if_damaged}")
    return value
