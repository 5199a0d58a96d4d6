"""JSON Schema as the one source of truth for every configuration file.

Schemas are YAML documents shipped in the package (``pullback/common/schemas`` and
``pullback/plugins/schemas``). Besides standard JSON Schema they may carry:

- ``x-secret: true`` on a property whose value must never be shown (and whose file must
  not be world-readable);
- ``x-secret-file: true`` on a path to a file that holds only a secret (it must be
  readable by its owner only; ``check`` reads every one);
- ``x-expected: "..."`` a phrase used in error messages ("expected a size like 512M");
- ``x-include: NAME`` a node replaced by the fragment ``common/schemas/_NAME.yaml``,
  the node's other keys kept beside it: one definition of what several schemas share
  (``_path``, ``_duration``, ``_timeout``, ``_size``: a value's pattern and its error
  words, in every schema; ``_email`` and ``_notify``: client.yaml's and server.yaml's sections).
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import os
import re
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

from . import validated
from .secrets import mask_url_password
from .units import DURATION_PATTERN, SIZE_PATTERN, parse_duration, parse_size
from .yamlfile import KeyPath, Problem, YamlDocument

if TYPE_CHECKING:
    import jsonschema

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}


@functools.cache
def _load_resource(package: str, name: str) -> str:
    return resources.files(package).joinpath("schemas", f"{name}.yaml").read_text("utf-8")


def _include(node: Any) -> Any:
    """Replace every ``{x-include: NAME}`` by the shared fragment ``schemas/_NAME.yaml``."""
    if isinstance(node, dict):
        if "x-include" in node:
            fragment = _yaml(_load_resource("pullback.common", f"_{node['x-include']}"))
            extra = {k: v for k, v in node.items() if k != "x-include"}
            return _include({**fragment, **extra})
        return {k: _include(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_include(v) for v in node]
    return node


@functools.cache
def _parsed_schema(package: str, name: str) -> dict:
    return _include(_yaml(_load_resource(package, name)))


def _yaml(text: str) -> Any:
    """A schema's YAML, through libyaml when PyYAML has it (Debian's and PyPI's do): the
    pure-Python parser took 85 ms of every command's start, the serve endpoint's too."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def shared_schema(package: str, name: str) -> dict:
    """The schema ``schemas/<name>.yaml`` of ``package``, one object for the process:
    for readers that never change it (a validator; common/validated.py keys on it)."""
    return _parsed_schema(package, name)


def load_schema(package: str, name: str) -> dict:
    """Return a fresh copy of the schema ``schemas/<name>.yaml`` shipped in ``package``
    (shared fragments included, see ``x-include``)."""
    return copy.deepcopy(_parsed_schema(package, name))


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "nothing (null)"
    for name, cls in (
        ("a string", str),
        ("an integer", int),
        ("a number", float),
        ("a list", list),
        ("a mapping", dict),
    ):
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _shown(value: Any, secret: bool) -> str:
    if secret:
        return "(a secret value, not shown)"
    if isinstance(value, str):  # (masked before the cut; only what can be shown masked)
        value = mask_url_password(value[:1500])
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected_types(spec) -> str:
    names = [spec] if isinstance(spec, str) else list(spec)
    return " or ".join(_TYPE_NAMES.get(n, n) for n in names)


def _known_keys(schema: dict) -> list[str]:
    return sorted(schema.get("properties", {}))


def _unknown_key_message(key: str, schema: dict) -> str:
    known = _known_keys(schema)
    close = difflib.get_close_matches(str(key), known, n=1)
    text = "unknown key"
    if close:
        text += f" (did you mean '{close[0]}'?)"
    elif known:
        text += f"; expected one of: {', '.join(known)}"
    return text


def _unknown_keys(error: jsonschema.ValidationError, path: KeyPath, schema: dict, secret: bool):
    if not isinstance(error.instance, dict):
        return None
    allowed = set(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    return [
        ((*path, key), _unknown_key_message(key, schema))
        for key in error.instance
        if key not in allowed and not any(p.search(str(key)) for p in patterns)
    ]


def _missing_keys(error: jsonschema.ValidationError, path: KeyPath, schema: dict, secret: bool):
    if not isinstance(error.instance, dict):
        return None
    return [
        ((*path, key), "missing (this key is required)")
        for key in error.validator_value
        if key not in error.instance
    ]


def _wrong_type(error: jsonschema.ValidationError, path: KeyPath, schema: dict, secret: bool):
    wanted = error.validator_value
    scalar = isinstance(error.instance, str | int | float) and not isinstance(error.instance, bool)
    if scalar and schema.get("x-expected"):  # "expected a duration like 7d, got 7"
        return [(path, f"expected {schema['x-expected']}, got {_shown(error.instance, secret)}")]
    message = f"expected {_expected_types(wanted)}, got {_type_of(error.instance)}"
    if error.instance is not None and not isinstance(error.instance, dict | list):
        message += f" {_shown(error.instance, secret)}"
    kinds = [wanted] if isinstance(wanted, str) else wanted
    if isinstance(error.instance, bool) and "string" in kinds:
        message += " (YAML reads yes/no/on/off as true/false: put the value in quotes)"
    elif (
        isinstance(error.instance, str)
        and {"number", "integer"} & set(kinds)
        and _reads_as_number(error.instance)
    ):
        message += " (YAML reads a number like 1e9 as text: write 1000000000 or 1.0e+9)"
    return [(path, message)]


def _reads_as_number(text: str) -> bool:
    """Whether ``text`` is a number Python reads (1e9) that YAML 1.1 left a string."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _yaml_word(value: Any) -> str:
    """A schema value as it is written in YAML: ``true``, ``null``, ``zstd``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _not_one_of(error: jsonschema.ValidationError, path: KeyPath, schema: dict, secret: bool):
    shown = "" if secret else f"{_shown(error.instance, secret)} is "
    choices = ", ".join(_yaml_word(value) for value in error.validator_value)
    return [(path, f"{shown}not one of {choices}")]


_BY_VALIDATOR = {
    "additionalProperties": _unknown_keys,
    "required": _missing_keys,
    "type": _wrong_type,
    "enum": _not_one_of,
}


def _worded_as_expected(kind: str, schema: dict) -> bool:
    """Whether an error of validator ``kind`` is said with the schema's ``x-expected``: a
    wrong pattern or form, and a duration or size below its minimum (as its text is)."""
    if not schema.get("x-expected"):
        return False
    if kind in ("pattern", "format", "anyOf", "oneOf"):
        return True
    return kind in ("minimum", "exclusiveMinimum") and schema.get("pattern") in _NUMBER_PARSERS


def _problems_for(error: jsonschema.ValidationError) -> Iterator[tuple[KeyPath, str]]:
    """(key path, message) for one validation error, in an administrator's words."""
    path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    secret = bool(schema.get("x-secret"))
    kind = error.validator
    handler = _BY_VALIDATOR.get(str(kind))
    found = handler(error, path, schema, secret) if handler else None
    if found is not None:
        yield from found
    elif _worded_as_expected(str(kind), schema):
        yield path, f"expected {schema['x-expected']}, got {_shown(error.instance, secret)}"
    elif kind in ("anyOf", "oneOf") and error.context:
        yield from _problems_for(jsonschema_module().exceptions.best_match(error.context))
    elif kind == "minItems" and error.validator_value == 1:
        yield path, "must not be empty"
    elif secret:
        yield path, f"invalid value ({kind} {error.validator_value!r})"
    else:
        yield path, error.message


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern:
    """``pattern`` with ECMA-262's ``$``: the end of the text. Python's ``$`` also matches
    before a final newline, which would let ``"web1\\n"`` pass as a host name."""
    out, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out))


_NUMBER_PARSERS = {DURATION_PATTERN: parse_duration, SIZE_PATTERN: parse_size}
"""Patterns that make a value a duration or a size, given as text or as a number."""


def _usable_number(pattern: str, value: Any, schema: dict) -> bool:
    """A duration or size must be a number a setting can hold: finite, not negative,
    within 64 bits ("9" * 400 + "M" is infinite; -1 seconds means nothing), and above
    the schema's ``exclusiveMinimum`` and at its ``minimum`` or above when given as text
    ("0s" for a timeout: JSON Schema judges only numbers by them)."""
    parse = _NUMBER_PARSERS.get(pattern)
    if parse is None:
        return True
    try:
        number = parse(value)
    except (ValueError, OverflowError):
        return False
    if not (math.isfinite(number) and 0 <= number < 2**63):
        return False
    low, above = schema.get("minimum"), schema.get("exclusiveMinimum")
    return (low is None or number >= low) and (above is None or number > above)


def _pattern(validator, pattern: str, instance: Any, schema: dict):
    if validator.is_type(instance, "string"):
        good = bool(_ecma_regex(pattern).search(instance)) and _usable_number(
            pattern, instance, schema
        )
    elif validator.is_type(instance, "number"):  # a duration or size given as a number
        good = _usable_number(pattern, instance, schema)
    else:
        return
    if not good:
        yield jsonschema_module().ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker, instance: Any) -> bool:
    # JSON Schema counts 3.0 as an integer; a setting that must be whole takes an int only
    return isinstance(instance, int) and not isinstance(instance, bool)


def _private(doc: YamlDocument) -> bool:
    """Whether only its owner may read ``doc``'s file (then its record name is keyed)."""
    try:
        return not os.stat(doc.path).st_mode & 0o044
    except (OSError, TypeError):
        return True


def jsonschema_module() -> Any:
    """The ``jsonschema`` module, imported when a document is first validated: its import
    is about 0.1 s of CPU, which a command whose documents are all known valid
    (common/validated.py) does not spend."""
    import jsonschema

    return jsonschema


def preload_validator(*, background: bool) -> None:
    """Import ``jsonschema`` now (before a fork: every child has it), or on a thread of its
    own (a host's pull loads it while it waits for the client; its sidecars are new data
    every day: common/validated.py has no record of them)."""
    if "jsonschema" in sys.modules:
        return
    if background:
        threading.Thread(target=jsonschema_module, name="load-validator", daemon=True).start()
    else:
        jsonschema_module()


@functools.cache
def _validator_class(base: Any) -> Any:
    checker = base.TYPE_CHECKER.redefine("integer", _is_integer)
    return jsonschema_module().validators.extend(base, {"pattern": _pattern}, type_checker=checker)


def validate(doc: YamlDocument, schema: dict, prefix: KeyPath = ()) -> list[Problem]:
    """Validate the part of ``doc`` at ``prefix`` against ``schema``.

    Returns the problems found (empty when valid), sorted by line, each naming file,
    line, full key path and what was expected.
    """
    data = doc.sub(prefix).data if prefix else doc.data
    seen_valid = validated.fingerprint("config", schema, data, private=_private(doc))
    if validated.known(seen_valid):
        return []
    jsonschema = jsonschema_module()
    validator_cls = _validator_class(jsonschema.validators.validator_for(schema))
    validator = validator_cls(schema)
    problems = []
    seen = set()
    for error in validator.iter_errors(data):
        for path, message in _problems_for(error):
            full = (*prefix, *path)
            item = doc.problem(full, message)
            if (item.key, item.message) not in seen:
                seen.add((item.key, item.message))
                problems.append(item)
    problems.sort(key=lambda p: (p.line or 0, p.key))
    if not problems:
        validated.remember(seen_valid)
    return problems


def apply_defaults(schema: dict, data: Any) -> Any:
    """Return ``data`` with every missing property that has a schema ``default`` filled in."""
    if isinstance(data, dict) and "properties" in schema:
        data = dict(data)
        for key, sub in schema["properties"].items():
            if key in data:
                data[key] = apply_defaults(sub, data[key])
            elif "default" in sub:
                data[key] = apply_defaults(sub, copy.deepcopy(sub["default"]))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in data:
                if key not in schema["properties"]:
                    data[key] = apply_defaults(extra, data[key])
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        data = [apply_defaults(schema["items"], item) for item in data]
    return data


def _string_leaves(value: Any) -> Iterator[str]:
    """Every string below ``value``, and every number as the text a program is given
    (``API_PIN: 4711`` unquoted is an int: an outside attack saw one logged in clear;
    :func:`..secrets.mask` masks a number where it stands whole, so a port or a count
    under a secret key hides no other number); not true/false, which hide nothing."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _string_leaves(item)


def find_marked(
    schema: dict, data: Any, marker: str, path: KeyPath = ()
) -> list[tuple[KeyPath, str]]:
    """Return ``(key path, value)`` for every string (or number, as text) value that
    ``schema`` marks with ``marker`` (``x-secret``, ``x-secret-file``)."""
    if schema.get(marker):
        return [(path, s) for s in _string_leaves(data)]
    found: list[tuple[KeyPath, str]] = []
    if isinstance(data, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in data.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub:
                found.extend(find_marked(sub, value, marker, (*path, key)))
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(data):
            found.extend(find_marked(schema["items"], item, marker, (*path, index)))
    return found


def find_secrets(schema: dict, data: Any) -> list[tuple[KeyPath, str]]:
    """``(key path, value)`` of every value ``schema`` marks ``x-secret``."""
    return find_marked(schema, data, "x-secret")


def find_secret_files(schema: dict, data: Any) -> list[tuple[KeyPath, str]]:
    """``(key path, path)`` of every file ``schema`` marks ``x-secret-file``."""
    return find_marked(schema, data, "x-secret-file")
