"""The docs and the tests agree: every doc file's promises are mapped to tests in docs/promises.md,
every test the docs name exists, and docs/testing.md's table of deliberate bugs is tests/mutants.py's
list, each of which still applies to the code."""

import ast
import glob
import os
import re

from tests import mutants
from tests.helpers import ROOT

PROMISES = os.path.join(ROOT, "docs", "promises.md")
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:::(\w+))?(?:\[[^\]`]*\])?`")


def doc_files() -> list[str]:
    """README.md and docs/*.md, relative to the repository root; the map itself aside."""
    found = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [path for path in found if path != "docs/promises.md"]


def table_rows(path: str) -> list[list[str]]:
    """The cells of every row of every Markdown table in `path` (header and rule rows left out)."""
    rows = []
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f]
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line.replace("|", "").strip()) <= set("-: "):
            continue
        if i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: ") and "-" in lines[i + 1]:
            continue  # a header row
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return rows


def headings(path: str) -> set[str]:
    with open(os.path.join(ROOT, path)) as f:
        return {line.lstrip("#").strip() for line in f if re.match(r"#{1,6} ", line)}


def defined_tests(path: str) -> set[str]:
    """`name` of every test function and `Class::name` of every test method in a test file."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)}
    return names


def missing_tests(text: str) -> list[str]:
    """The test ids in `text` (`tests/test_x.py::test_y`, optionally `[params]`) that do not exist."""
    missing = []
    for path, first, second in TEST_ID.findall(text):
        name = f"{first}::{second}" if second else first
        if not os.path.exists(os.path.join(ROOT, path)) or name not in defined_tests(path):
            missing.append(f"{path}::{name}")
    return missing


def test_every_promise_names_tests_that_exist():
    rows = [row for row in table_rows(PROMISES) if len(row) == 3]
    assert len(rows) > 50
    covered, problems = set(), []
    for where, promise, tests in rows:
        path, _, section = where.partition(" § ")
        covered.add(path)
        if not os.path.exists(os.path.join(ROOT, path)):
            problems.append(f"{where}: no such file")
        elif section not in headings(path):
            problems.append(f"{where}: no such section in {path}")
        if not TEST_ID.search(tests):
            problems.append(f"{where}: {promise!r} names no test")
    assert problems == []
    assert [path for path in doc_files() if path not in covered] == [], "doc files with no row in docs/promises.md"
    # Every test named in any doc exists (the tables here, docs/testing.md's, the docs' own prose).
    for path in ["docs/promises.md", *doc_files()]:
        assert missing_tests(open(os.path.join(ROOT, path)).read()) == [], path


def test_the_mutants_table_lists_every_mutant_and_each_still_applies():
    rows = [row for row in table_rows(os.path.join(ROOT, "docs", "testing.md")) if row and row[0].startswith("`")]
    listed = [row[0].strip("`") for row in rows]
    assert listed == [mutant.name for mutant in mutants.MUTANTS]
    assert all(TEST_ID.search(row[-1]) for row in rows), "a mutant that no test caught"
    assert len(mutants.MUTANTS) >= 15
    for mutant in mutants.MUTANTS:  # the code it patches has not moved
        assert open(os.path.join(ROOT, mutant.path)).read().count(mutant.old) == 1, (mutant.name, mutant.path)
