"""The README's guided path and its links point at code that exists.

"Follow one training step" names its stops as `file:function` (or `file:Class.method`). A
rename that forgets the README would leave a reader following a dead trail, so every stop is
looked up: Python names through the module's syntax tree, C names as a function definition
in the source. Every relative link of the README must name a file or folder of the repository.
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def guided_path_stops():
    section = README.split("## Follow one training step", 1)[1].split("\n## ", 1)[0]
    return sorted(set(re.findall(r"`((?:microgpt|csrc|cuda)/[\w/]+\.(?:py|c|cu)):([\w.]+)`", section)))


def python_names(path):
    """Every top-level function and class, and every method as Class.method."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef))
        if isinstance(node, ast.Assign):     # aliases such as `sum = _ref.sum`
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_the_guided_path_has_stops():
    assert len(guided_path_stops()) >= 10


@pytest.mark.parametrize("path, name", guided_path_stops())
def test_every_stop_exists(path, name):
    full = os.path.join(ROOT, path)
    assert os.path.isfile(full), f"README names {path}, which does not exist"
    if path.endswith(".py"):
        assert name in python_names(full), f"README names {path}:{name}, which is not defined there"
    else:
        source = open(full, encoding="utf-8").read()
        assert re.search(rf"^\w[\w\s\*]*\b{re.escape(name)}\s*\([^;]*?\)\s*\{{", source, re.M | re.S), \
            f"README names {path}:{name}, which is not a function defined there"


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(((?!https?:)[^)#\s]+)", README))))
def test_every_relative_link_exists(target):
    assert os.path.exists(os.path.join(ROOT, target)), f"README links to {target}, which does not exist"
