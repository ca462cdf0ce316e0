"""Registries: every built-in tag's module registers that tag; a union or a sections mapping
validates each value with its own kind's model, looked up when validated (a kind registered or
replaced later is used at once), and errors keep the key path the user wrote."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokend.oauth.grants import CREDENTIALS
from tokend.registry import UNKNOWN_KIND, Registry
from tokend.resources import RESOURCES
from tokend.secrets import SECRET_FORMS
from tokend.sinks import SINKS
from tokend.validation import validation_lines


@pytest.mark.parametrize(
    "family", [SINKS, CREDENTIALS, RESOURCES, SECRET_FORMS], ids=lambda family: family.what
)
def test_each_builtin_module_registers_its_tag(family: Registry[Any]) -> None:
    for tag in family.tags:
        assert family[tag].options is not None, tag


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class Plain(Base):
    type: Literal["plain"]
    path: str


class Counted(Base):
    type: Literal["counted"]
    count: int = Field(ge=1)


@dataclass(frozen=True)
class Kind:
    options: type


KINDS: Registry[Kind] = Registry("thing type")


class Holder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    things: list[KINDS.union(Base)]  # type: ignore[valid-type]
    sections: KINDS.sections() = {}  # type: ignore[valid-type]


@pytest.fixture(autouse=True)
def kinds() -> Iterator[None]:
    KINDS.register("plain", Kind(Plain))
    KINDS.register("counted", Kind(Counted))
    yield
    for tag in list(KINDS.tags):
        KINDS.unregister(tag)


def lines(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Holder.model_validate(document)
    return validation_lines(caught.value, Holder)


def test_each_value_is_its_own_kind() -> None:
    holder = Holder.model_validate(
        {"things": [{"type": "plain", "path": "/x"}, {"type": "counted", "count": 2}]}
    )
    assert holder.things == [Plain(type="plain", path="/x"), Counted(type="counted", count=2)]


def test_errors_keep_the_key_path_the_user_wrote() -> None:
    assert lines({"things": [{"type": "plain"}, {"type": "counted", "count": 0, "cuont": 1}]}) == [
        "things.0.path: required key is missing",
        "things.1.count: input should be greater than or equal to 1",
        "things.1.cuont: unknown key (did you mean 'count'?)",
    ]


def test_an_unknown_or_missing_tag_lists_the_known_ones() -> None:
    assert lines({"things": [{"type": "plane"}, {"path": "/x"}, "plain"]}) == [
        "things.0: unknown type 'plane' (known: counted, plain)",
        "things.1: type is missing (known: counted, plain)",
        "things.2: input should be a valid dictionary or object to extract fields from",
    ]


def test_a_kind_replaced_later_is_the_one_used() -> None:
    class Other(Base):
        type: Literal["plain"]
        url: str

    Holder.model_validate({"things": [{"type": "plain", "path": "/x"}]})
    KINDS.unregister("plain")
    assert lines({"things": [{"type": "plain", "path": "/x"}]})[0].startswith(
        "things.0: unknown type 'plain'"
    )
    KINDS.register("plain", Kind(Other))
    holder = Holder.model_validate({"things": [{"type": "plain", "url": "u"}]})
    assert holder.things == [Other(type="plain", url="u")]


def test_sections_validate_the_keys_present_and_refuse_others() -> None:
    holder = Holder.model_validate(
        {"things": [], "sections": {"counted": {"type": "counted", "count": 3}}}
    )
    assert holder.sections == {"counted": Counted(type="counted", count=3)}
    assert lines({"things": [], "sections": {"counted": {"type": "counted"}, "nope": {}}}) == [
        "counted.count: required key is missing",
        "nope: unknown key",
    ]
    assert [error["type"] for error in _errors({"things": [{"type": 1}]})] == [UNKNOWN_KIND]


def _errors(document: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        Holder.model_validate(document)
    return caught.value.errors()
