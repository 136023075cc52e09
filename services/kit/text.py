"""Rules that hold for every string a caller sends, whatever the service and transport.

The call boundary (`services.kit.server`) applies them to every request message before a
handler sees it, and the WebSocket endpoints read their frames with `json_object`, so a
service's domain only checks its own limits. A string holding U+0000 is refused as bad input:
PostgreSQL text cannot store it, and no field of the platform means it. A JSON frame may spell
a lone surrogate, which is no text at all, or nest without end: both are refused there, before
anything is stored or answered. (Protobuf itself refuses invalid UTF-8.)
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.kit.errors import InvalidArgument

NUL = "\x00"
NUL_PROBLEM = "must not contain the NUL character (U+0000)"
UNICODE_PROBLEM = "must be valid Unicode text (a lone surrogate such as \\ud800 is not)"
# Deeper than any message of the platform's JSON protocols nests.
MAX_JSON_DEPTH = 32


def reject_nul(value: str, field: str) -> None:
    if NUL in value:
        raise InvalidArgument(field, NUL_PROBLEM)


def trimmed_text(raw: str, field: str, low: int, high: int) -> str:
    """The text without surrounding whitespace, if it holds low–high characters (code points)."""
    text = raw.strip()
    reject_nul(text, field)
    if not low <= len(text) <= high:
        if low > 0 and not text:
            raise InvalidArgument(field, f"is required: {low}–{high} characters after trimming")
        raise InvalidArgument(field, f"must be {low}–{high} characters after trimming, got {len(text)}")
    return text


def is_unicode(text: str) -> bool:
    """False for a str that holds a lone surrogate (JSON can spell one: "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_object(raw: str | bytes, field: str = "message") -> dict[str, Any]:
    """A client's JSON message (a WebSocket text frame) as an object, or INVALID_ARGUMENT: it
    must parse, nest at most MAX_JSON_DEPTH deep, and hold only valid Unicode strings."""
    if isinstance(raw, bytes):
        raise InvalidArgument(field, "must be a JSON object in a text frame, not a binary frame")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidArgument(field, f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:
        raise InvalidArgument(field, f"is not valid JSON ({error.args[0] if error.args else error})") from error
    if not isinstance(body, dict):
        raise InvalidArgument(field, "must be a JSON object")
    _check_json(body, field, 1)
    return body


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgument(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str) and not is_unicode(value):
        raise InvalidArgument(path, UNICODE_PROBLEM)
    if isinstance(value, dict):
        for key, item in value.items():
            if not is_unicode(key):
                raise InvalidArgument(path, f"has a key that {UNICODE_PROBLEM}")
            _check_json(item, key if depth == 1 else f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)


def check_strings(message: Message) -> None:
    """Refuse a message any of whose strings (at any depth, map keys included) holds NUL;
    the error names the field as a path, e.g. `document.tags[2]`."""
    field = nul_field(message)
    if field is not None:
        raise InvalidArgument(field, NUL_PROBLEM)


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string holding NUL, or None. Only set fields are visited, so a
    small request costs a few microseconds."""
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        map_entry = _map_entry(descriptor)
        if map_entry is not None:
            found = _nul_in_map(map_entry, value, path)
        elif descriptor.type == FieldDescriptor.TYPE_STRING:
            found = _nul_in_strings(value, path, repeated=_is_repeated(descriptor))
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            found = _nul_in_messages(value, path, repeated=_is_repeated(descriptor))
        else:
            found = None
        if found is not None:
            return found
    return None


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    return bool(descriptor.is_repeated)


def _map_entry(descriptor: FieldDescriptor) -> Descriptor | None:
    """The entry type of a map field (its `key` and `value`), None for any other field."""
    entry = descriptor.message_type
    return entry if entry is not None and _is_repeated(descriptor) and entry.GetOptions().map_entry else None


def _nul_in_strings(value: Any, path: str, *, repeated: bool) -> str | None:
    if not repeated:
        return path if NUL in str(value) else None
    for index, item in enumerate(value):
        if NUL in item:
            return f"{path}[{index}]"
    return None


def _nul_in_messages(value: Any, path: str, *, repeated: bool) -> str | None:
    if not repeated:
        return nul_field(value, f"{path}.")
    for index, item in enumerate(value):
        found = nul_field(item, f"{path}[{index}].")
        if found is not None:
            return found
    return None


def _nul_in_map(entry: Descriptor, value: Any, path: str) -> str | None:
    entry_value = entry.fields_by_name["value"]
    for key, item in value.items():
        if isinstance(key, str) and NUL in key:
            return f"{path}[{key!r}]"
        if entry_value.type == FieldDescriptor.TYPE_STRING and NUL in item:
            return f"{path}[{key!r}]"
        if entry_value.type == FieldDescriptor.TYPE_MESSAGE:
            found = nul_field(item, f"{path}[{key!r}].")
            if found is not None:
                return found
    return None
