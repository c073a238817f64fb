"""The safe YAML loader: lines, duplicates, alias bombs, tags, size, syntax."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from twin.errors import ValidationError
from twin.model import loader
from twin.model.loader import load_file, load_text


def only_problem(excinfo):
    problems = excinfo.value.problems
    assert len(problems) == 1, problems
    return problems[0]


def test_line_numbers_of_nested_values():
    loaded = load_text("a: 1\nb:\n  - x: 1\n    y: 2\n  - x: 3\n", "f.yaml")
    assert loaded.data == {"a": 1, "b": [{"x": 1, "y": 2}, {"x": 3}]}
    assert loaded.lines.line_of("a") == 1
    assert loaded.lines.line_of("b.0.y") == 4
    assert loaded.lines.line_of("b.1.x") == 5
    # An unknown path falls back to its nearest ancestor.
    assert loaded.lines.line_of("b.1.nothing") == 5


def test_duplicate_key_is_an_error_at_its_line():
    with pytest.raises(ValidationError) as excinfo:
        load_text("name: a\nsites: []\nname: b\n", "f.yaml")
    problem = only_problem(excinfo)
    assert str(problem) == "f.yaml:3: name: duplicate key 'name'; remove one of the two entries"


def billion_laughs(levels: int = 10) -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_fast_with_bounded_memory():
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValidationError) as excinfo:
            load_text(billion_laughs(), "bomb.yaml")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    problem = only_problem(excinfo)
    assert "expands to more than" in problem.message and "YAML aliases" in problem.message
    assert "billion laughs" in problem.fix
    assert problem.line is not None
    assert elapsed < 5
    assert peak < 20 * 2**20


def test_modest_aliases_are_allowed():
    loaded = load_text("base: &b {x: 1}\nother: *b\n")
    assert loaded.data["other"] == {"x": 1}


@pytest.mark.parametrize("text", [
    "a: !!python/object/apply:os.system ['echo hi']\n",
    "a: !!python/name:os.system\n",
    "a: !custom 3\n",
])
def test_python_and_custom_tags_are_rejected(text):
    with pytest.raises(ValidationError) as excinfo:
        load_text(text, "tags.yaml")
    problem = only_problem(excinfo)
    assert problem.line == 1
    assert "tag" in problem.fix.lower()


def test_merge_keys_are_rejected():
    with pytest.raises(ValidationError, match="merge keys"):
        load_text("base: &b {x: 1}\nother:\n  <<: *b\n")


def test_size_limit_on_text_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValidationError, match="larger than"):
        load_text("a: " + "x" * 200)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 200)
    with pytest.raises(ValidationError) as excinfo:
        load_file(big)
    assert "limit" in only_problem(excinfo).message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file(text):
    with pytest.raises(ValidationError) as excinfo:
        load_text(text, "e.yaml")
    assert str(only_problem(excinfo)) == ("e.yaml:1: (top level): file is empty; "
                                          "write a topology or scenario description")


def test_bad_yaml_reports_its_line():
    with pytest.raises(ValidationError) as excinfo:
        load_text("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml")
    problem = only_problem(excinfo)
    assert problem.message.startswith("not valid YAML")
    assert problem.line in (3, 4)
    assert problem.fix == "fix the YAML syntax at this line"


def test_tab_indentation_reports_its_line():
    with pytest.raises(ValidationError) as excinfo:
        load_text("a:\n\tb: 1\n", "tab.yaml")
    assert only_problem(excinfo).line == 2


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ValidationError, match="cannot read file"):
        load_file(tmp_path / "nope.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValidationError, match="not UTF-8"):
        load_file(latin)


def test_deep_nesting_is_a_clean_error():
    # PyYAML recurses per level; the loader must turn that into a message, not a traceback.
    depth = 5000
    text = "a: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(ValidationError, match="nested too deeply"):
        load_text(text)
