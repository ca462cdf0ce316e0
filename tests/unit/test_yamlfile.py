"""The streaming YAML reader means what PyYAML's safe_load means, and is strict about keys."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.yamlfile import read_yaml

DOCUMENTS = [
    "",
    "a: 1\nb: [x, 2.5, null, true, no, ~]\nc: {d: e}",
    "mode: 0600\ntext: '0600'\nhex: 0x1f\nwhen: 2026-11-23\nempty:\n",
    "base: &base {type: file, mode: '0640'}\nsink:\n  <<: *base\n  path: /x\n",
    "a: &a [1, 2]\nb: *a\n",
    "x: !!str 123\ny: !!int '7'\n",
    "defaults: &d {a: 1, b: 2}\nmore: &m {b: 3, c: 4}\nboth: {<<: [*d, *m], c: 5}\n",
    "- 'quoted: colon'\n- \"tab\\there\"\n- |\n  block\n  text\n",
    "=: 1\nb: {&v =: x, c: *v}\n",  # YAML 1.1's value key `=`: PyYAML reads it as a str key
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_same_values_as_safe_load(text: str) -> None:
    assert read_yaml(text) == yaml.safe_load(text)


def test_merge_keys_and_yaml_1_1_scalars() -> None:
    document = read_yaml(DOCUMENTS[2] + DOCUMENTS[3])
    assert document["mode"] == 0o600 and document["text"] == "0600"
    assert document["when"] == date(2026, 11, 23)
    assert document["sink"] == {"type": "file", "mode": "0640", "path": "/x"}


TAG = "unsupported tag (a value starting with '!' is a YAML tag); quote the value if it is not meant as one"


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        ("a: 1\nb: 2\na: 3\n", "duplicate key 'a'", 3),
        ("tokens:\n  crm: {}\n  crm: {}\n", "duplicate key 'crm'", 3),
        (
            "a: *nowhere\n",
            "an alias (a value starting with '*') names no anchor above it; quote the value if "
            "it is not meant as an alias",
            1,
        ),
        ("? [a, b]\n: 1\n", "a key must be a plain value", 1),
        ("a: 1\n---\nb: 2\n", "a config file holds one YAML document", 2),
        (
            "a: !!python/object:os.system x\n",
            TAG,
            1,
        ),
        ("a: !custom {b: 1}\n", TAG, 1),
        ("a: !Tr0ub4dor {b: 1}\n", TAG, 1),  # an unquoted password is never quoted back
        ("a: =\n", "a value YAML reads as a type no setting has; quote it", 1),
        ("a:\n  b: 2024-02-30\n", "not a valid timestamp (quote the value if it is text)", 2),
        ("a: !!int abc\n", "not a valid int (quote the value if it is text)", 1),
        ('a: "x\\0y"\n', "a value holds a NUL character (\\0), which no setting can", 1),
        ('a:\n  "k\\0": 1\n', "a key holds a NUL character (\\0), which no setting can", 2),
        ("a:\n  <<: [1, 2]\n", "<< takes a mapping or a list of mappings", 2),
    ],
)
def test_problems_name_their_line(text: str, problem: str, line: int) -> None:
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        read_yaml(text)
    assert caught.value.problem == problem
    assert caught.value.problem_mark is not None
    assert caught.value.problem_mark.line + 1 == line


# Any text but NUL (refused) and lone surrogates (not UTF-8).
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
scalars = st.none() | st.booleans() | st.integers() | texts | st.floats(allow_nan=False)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300)
@given(documents, st.booleans())
def test_agrees_with_safe_load_on_anything_pyyaml_writes(document: Any, flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow)
    assert read_yaml(text) == yaml.safe_load(text)


def test_keys_are_the_text_written() -> None:
    """A config's keys are names: YAML 1.1 would read these as a boolean, an int, a date, null."""
    text = "no: 1\n0x1F: 2\n2024-01-01: 3\nnull: 4\n'on': 5\n=: 6\n"
    assert read_yaml(text) == {"no": 1, "0x1F": 2, "2024-01-01": 3, "null": 4, "on": 5, "=": 6}
    assert read_yaml("base: &b {no: 1}\nother:\n  <<: *b\n") == {
        "base": {"no": 1},
        "other": {"no": 1},
    }
