"""Reading YAML config files: strict, and light on memory however large the file.

PyYAML's `load` first composes a node tree of the whole document (each node with two position
marks), then builds Python values from it: for a 10,000-token config that tree is ~45 MB, and
memory freed after a burst like that stays fragmented for the life of the process. Here values
are built straight from libyaml's event stream, so parsing holds only the values themselves.
Resolution and scalar construction are PyYAML's own (YAML 1.1, safe types); anchors, aliases and
merge keys (`<<: *base`) work as usual. A key given twice is an error (PyYAML keeps the last).

Two departures, for a config's sake: every key is the text written (a config's keys are names,
and an identity called `no` or a token called `2024-01-01` is not a boolean or a date), and a
NUL character in a value is an error here, at its line, rather than deep in whatever opens a
path. Errors never quote a tag or an alias: an unquoted value starting with `!` or `*` (read as
a tag or an alias) is often a password.
"""

from __future__ import annotations

from typing import Any

import yaml

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml, in PyYAML's wheels
_MERGE = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class YamlError(yaml.MarkedYAMLError):
    """A problem at a place in the document (`problem_mark` says where)."""

    def __init__(self, problem: str, event: yaml.Event) -> None:
        start = event.start_mark  # libyaml's own Mark type: copy the position
        mark = None
        if start is not None:
            mark = yaml.Mark("<config>", start.index, start.line, start.column, "", 0)
        super().__init__(problem=problem, problem_mark=mark)


def read_yaml(text: str) -> Any:
    """The single document in `text` as Python values (None for an empty stream). Raises
    `yaml.YAMLError` (with a position where one is known)."""
    loader = _Loader(text)
    try:
        return _Builder(loader).document()
    finally:
        loader.dispose()


MAX_DEPTH = 64
"""No config nests deeper; a document that does is refused before Python's stack runs out."""


class _Builder:
    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._anchors: dict[str, Any] = {}
        self._depth = 0
        self._scalars: dict[tuple[Any, ...], Any] = {}  # a value written many times, resolved once
        self._strings: dict[str, str] = {}  # the same text written many times: one str
        self._claimed = frozenset(loader.yaml_implicit_resolvers)
        """First characters of plain scalars an implicit resolver may turn into another type."""

    def document(self) -> Any:
        events = self._loader
        events.get_event()  # stream start
        if events.check_event(yaml.StreamEndEvent):
            return None
        events.get_event()  # document start
        value = self._value(events.get_event())
        events.get_event()  # document end
        if not events.check_event(yaml.StreamEndEvent):
            raise YamlError("a config file holds one YAML document", events.get_event())
        return value

    def _value(self, event: yaml.Event) -> Any:
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self._anchors:
                raise YamlError(
                    "an alias (a value starting with '*') names no anchor above it; "
                    "quote the value if it is not meant as an alias",
                    event,
                )
            return self._anchors[event.anchor]
        if isinstance(event, yaml.ScalarEvent):
            value = self._scalar(event)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if event.tag not in _COLLECTION_TAGS:
                raise _unsupported_tag(event)
            if self._depth >= MAX_DEPTH:
                raise YamlError(f"nested more than {MAX_DEPTH} levels deep", event)
            self._depth += 1
            value = (
                self._sequence() if isinstance(event, yaml.SequenceStartEvent) else self._mapping()
            )
            self._depth -= 1
        else:  # pragma: no cover - libyaml emits nothing else inside a document
            raise YamlError(f"unexpected {type(event).__name__}", event)
        if event.anchor:
            self._anchors[event.anchor] = value
        return value

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        text = _text(event, "value")
        if event.tag is None and (not event.implicit[0] or (text and text[0] not in self._claimed)):
            # Quoted, or plain and starting with a character no resolver claims (names, paths,
            # URLs): a str as written, with no node built nor resolver asked (3x faster).
            return self._strings.setdefault(text, text)
        key = (event.tag, event.value, event.implicit, event.style)
        if key in self._scalars:
            return self._scalars[key]
        value = self._construct(event)
        if isinstance(value, _IMMUTABLE):  # shared safely between the places it appears
            self._scalars[key] = value
        return value

    def _construct(self, event: yaml.ScalarEvent) -> Any:
        loader = self._loader
        tag = event.tag
        if tag in (None, "!"):
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        construct = loader.yaml_constructors.get(tag)
        if construct is None or tag == _MERGE:
            if tag == _MERGE:
                return _Merge()
            raise _unsupported_tag(event)
        try:
            return construct(loader, yaml.ScalarNode(tag, event.value, style=event.style))
        except (ValueError, OverflowError):  # `2024-02-30`, `!!int abc`: not what it looks like
            kind = tag.rsplit(":", 1)[-1]
            raise YamlError(f"not a valid {kind} (quote the value if it is text)", event) from None

    def _sequence(self) -> list[Any]:
        items = []
        while not self._loader.check_event(yaml.SequenceEndEvent):
            items.append(self._value(self._loader.get_event()))
        self._loader.get_event()
        return items

    def _key(self, event: yaml.Event) -> Any:
        """A key as written: the text of a plain or quoted scalar (`no`, `0x1F`, `null` and
        `=` included), or `<<` for a merge. A collection as a key is refused by the caller."""
        if not isinstance(event, yaml.ScalarEvent) or event.tag is not None:
            return self._value(event)
        if event.implicit[0] and event.value == "<<":
            return _Merge()
        text = _text(event, "key")
        key = self._strings.setdefault(text, text)
        if event.anchor:
            self._anchors[event.anchor] = key
        return key

    def _mapping(self) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        merged: list[dict[Any, Any]] = []
        while not self._loader.check_event(yaml.MappingEndEvent):
            key_event = self._loader.get_event()
            key = self._key(key_event)
            value = self._value(self._loader.get_event())
            if isinstance(key, _Merge):
                merged += _mappings_to_merge(value, key_event)
                continue
            try:
                if key in mapping:
                    raise YamlError(f"duplicate key '{key}'", key_event)
            except TypeError:
                raise YamlError("a key must be a plain value", key_event) from None
            mapping[key] = value
        self._loader.get_event()
        for source in merged:  # explicit keys win; earlier merges win over later ones
            for key, value in source.items():
                mapping.setdefault(key, value)
        return mapping


class _Merge:
    """The `<<` key of a merge."""


def _text(event: yaml.ScalarEvent, what: str) -> str:
    text: str = event.value
    if "\x00" in text:
        raise YamlError(f"a {what} holds a NUL character (\\0), which no setting can", event)
    return text


def _unsupported_tag(event: yaml.Event) -> YamlError:
    if getattr(event, "tag", None) in (None, "!"):  # resolved from a plain value, e.g. `=`
        return YamlError("a value YAML reads as a type no setting has; quote it", event)
    return YamlError(
        "unsupported tag (a value starting with '!' is a YAML tag); quote the value if it is "
        "not meant as one",
        event,
    )


_IMMUTABLE = (str, int, float, bool, type(None))


def _mappings_to_merge(value: Any, event: yaml.Event) -> list[dict[Any, Any]]:
    sources = value if isinstance(value, list) else [value]
    if not all(isinstance(source, dict) for source in sources):
        raise YamlError("<< takes a mapping or a list of mappings", event)
    return sources
