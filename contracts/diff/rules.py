"""What changed between two contracts, and whom each change breaks.

Categories follow buf's breaking-change categories, strictest first: FILE (generated code's
source compatibility), PACKAGE (the same, across files of a package), WIRE_JSON (the JSON
encoding) and WIRE (the binary encoding). A change is reported in the *least* strict category
that it breaks: a WIRE change breaks everything above it too. Rule ids are buf's where buf
has the rule. Beyond buf:

- HTTP: the `google.api.http` routes (verb, path, body, response body) that JSON clients call
  through Envoy's transcoder (buf does not look at them, buf issue #81);
- EVENT: messages of the events package (payloads on topics, and the envelope): a change that
  breaks their wire format breaks events already stored in Kafka or in flight, read by new
  consumers, not only live callers; an event's type or topic changing breaks its consumers;
- BEHAVIOUR: the documented errors of an RPC and the limits in a field's comment, for a human to
  judge (severity "review");
- SAFE: additions, listed so the reviewer sees everything that changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from contracts.diff.model import Contract, Enum, Field, Message, Method, Route, Where
from contracts.registry import documented_errors

BREAKING, REVIEW, SAFE = "breaking", "review", "safe"
OLD_CLIENT = "old client → new server"
NEW_CLIENT = "new client → old server"
STORED_EVENT = "stored or in-flight event → new consumer"
NEW_EVENT = "new event → old consumer"
JSON_CLIENT = "JSON client (through Envoy) → new server"
GENERATED_CODE = "code generated from the old protos"
NUMBERS = re.compile(r"\d+(?:[.,]\d+)?")
TEMPLATE_VARIABLE = re.compile(r"{([^}=]+)(?:=[^}]*)?}")  # {space_id} or {name=spaces/*}


@dataclass(frozen=True)
class Change:
    rule: str
    category: str
    severity: str
    element: str
    message: str
    base: Where | None
    head: Where | None
    breaks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "element": self.element,
            "message": self.message,
            "base": str(self.base) if self.base else None,
            "head": str(self.head) if self.head else None,
            "breaks": list(self.breaks),
        }


def compare(base: Contract, head: Contract) -> list[Change]:
    changes: list[Change] = []
    roles = {**base.roles(), **head.roles()}
    changes += _files(base, head)
    changes += _messages(base, head, roles)
    changes += _enums(base, head)
    changes += _methods(base, head)
    return sorted(changes, key=lambda c: ({BREAKING: 0, REVIEW: 1, SAFE: 2}[c.severity], c.category, c.element))


# ------------------------------------------------------------------ files and packages


def _files(base: Contract, head: Contract) -> list[Change]:
    changes = []
    for name, old in base.files.items():
        new = head.files.get(name)
        if new is None:
            changes.append(
                Change("FILE_NO_DELETE", "FILE", BREAKING, name, "file deleted", old.where, None, (GENERATED_CODE,))
            )
            continue
        if old.package != new.package:
            message = f"package {old.package} → {new.package}"
            changes.append(
                Change("FILE_SAME_PACKAGE", "PACKAGE", BREAKING, name, message, old.where, new.where, (OLD_CLIENT,))
            )
        for option in sorted(set(old.options) | set(new.options)):
            if old.options.get(option) != new.options.get(option):
                message = (
                    f"option {option}: {old.options.get(option, '(unset)')} → {new.options.get(option, '(unset)')}"
                )
                rule = f"FILE_SAME_{option.upper()}"
                changes.append(Change(rule, "FILE", BREAKING, name, message, old.where, new.where, (GENERATED_CODE,)))
    for name, new in head.files.items():
        if name not in base.files:
            changes.append(Change("FILE_ADDED", "SAFE", SAFE, name, "file added", None, new.where))
    for package in sorted(base.packages() - head.packages()):
        changes.append(
            Change("PACKAGE_NO_DELETE", "PACKAGE", BREAKING, package, "package deleted", None, None, (OLD_CLIENT,))
        )
    return changes


# ------------------------------------------------------------------ messages and fields


def _messages(base: Contract, head: Contract, roles: dict[str, set[str]]) -> list[Change]:
    changes = []
    for name, old in base.messages.items():
        new = head.messages.get(name)
        if new is None:
            if old.is_event:
                message = (
                    f"event message deleted (event_type {old.event_type!r})"
                    if old.event_type
                    else "event message deleted"
                )
                changes.append(
                    Change(
                        "EVENT_NO_DELETE", "EVENT", BREAKING, name, message, old.where, None, (STORED_EVENT, NEW_EVENT)
                    )
                )
            else:
                changes.append(
                    Change(
                        "PACKAGE_MESSAGE_NO_DELETE",
                        "PACKAGE",
                        BREAKING,
                        name,
                        "message deleted",
                        old.where,
                        None,
                        (OLD_CLIENT, GENERATED_CODE),
                    )
                )
            continue
        changes += _event_identity(old, new)
        changes += _fields(old, new, roles.get(name, set()))
        changes += _reserved(name, old.reserved_numbers, new.reserved_numbers, old.where, new.where, "number")
        changes += _reserved(name, old.reserved_names, new.reserved_names, old.where, new.where, "name")
    for name, new in head.messages.items():
        if name not in base.messages:
            rule, category = ("EVENT_ADDED", "SAFE") if new.is_event else ("MESSAGE_ADDED", "SAFE")
            changes.append(Change(rule, category, SAFE, name, "added", None, new.where))
    return changes


def _event_identity(old: Message, new: Message) -> list[Change]:
    changes = []
    for what, before, after in (("event_type", old.event_type, new.event_type), ("topic", old.topic, new.topic)):
        if before != after:
            message = f"{what} {before or '(none)'} → {after or '(none)'}: consumers subscribe and dispatch by it"
            changes.append(
                Change(
                    "EVENT_SAME_TYPE",
                    "EVENT",
                    BREAKING,
                    old.name,
                    message,
                    old.where,
                    new.where,
                    (NEW_EVENT, STORED_EVENT),
                )
            )
    return changes


def _breaks(roles: set[str], both_ways: bool) -> tuple[str, ...]:
    """Who a field change breaks, by how its message travels."""
    found: list[str] = []
    if roles & {"request", "response"} or not roles:
        found += [OLD_CLIENT, NEW_CLIENT] if both_ways else [OLD_CLIENT]
    if "event" in roles:
        found += [STORED_EVENT, NEW_EVENT] if both_ways else [STORED_EVENT]
    return tuple(found)


def _category(roles: set[str], category: str) -> str:
    """An event's wire-breaking change is reported as EVENT: it outlives the deploy."""
    return "EVENT" if "event" in roles and category in ("WIRE", "WIRE_JSON") else category


def _fields(old: Message, new: Message, roles: set[str]) -> list[Change]:
    changes = []

    def add(rule: str, category: str, severity: str, field: Field, message: str, now: Field | None, both: bool) -> None:
        element = f"{old.name}.{field.name}"
        breaks = _breaks(roles, both) if severity == BREAKING else ()
        changes.append(
            Change(
                rule,
                _category(roles, category),
                severity,
                element,
                message,
                field.where,
                now.where if now else new.where,
                breaks,
            )
        )

    by_name = {field.name: field for field in new.fields.values()}
    for number, field in old.fields.items():
        now = new.fields.get(number)
        if now is None:
            moved = by_name.get(field.name)
            if moved is not None:
                add("FIELD_SAME_NUMBER", "WIRE", BREAKING, field, f"renumbered {number} → {moved.number}", moved, True)
            elif number not in new.reserved_numbers:
                add(
                    "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
                    "WIRE",
                    BREAKING,
                    field,
                    f"field {number} deleted and its number not reserved",
                    None,
                    False,
                )
            elif field.name not in new.reserved_names:
                add(
                    "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
                    "WIRE_JSON",
                    BREAKING,
                    field,
                    "field deleted and its name not reserved",
                    None,
                    False,
                )
            else:
                add(
                    "FIELD_NO_DELETE",
                    "PACKAGE",
                    BREAKING,
                    field,
                    "field deleted (number and name reserved)",
                    None,
                    False,
                )
            continue
        if now.name != field.name:
            add("FIELD_SAME_NAME", "WIRE_JSON", BREAKING, field, f"renamed to {now.name}", now, True)
        if now.json_name != field.json_name:
            add(
                "FIELD_SAME_JSON_NAME",
                "WIRE_JSON",
                BREAKING,
                field,
                f"JSON name {field.json_name} → {now.json_name}",
                now,
                True,
            )
        if now.type != field.type:
            add("FIELD_SAME_TYPE", "WIRE", BREAKING, field, f"type {field.type} → {now.type}", now, True)
        if now.cardinality != field.cardinality:
            add(
                "FIELD_SAME_CARDINALITY", "WIRE", BREAKING, field, f"{field.cardinality} → {now.cardinality}", now, True
            )
        if now.oneof != field.oneof:
            add(
                "FIELD_SAME_ONEOF",
                "WIRE",
                BREAKING,
                field,
                f"oneof {field.oneof or '(none)'} → {now.oneof or '(none)'}",
                now,
                True,
            )
        if _numbers(now.comment) != _numbers(field.comment):
            add(
                "BEHAVIOUR_FIELD_LIMITS",
                "BEHAVIOUR",
                REVIEW,
                field,
                f"documented limits changed: {_excerpt(field.comment)!r} → {_excerpt(now.comment)!r}",
                now,
                False,
            )
    for number, field in new.fields.items():
        if number not in old.fields and field.name not in {f.name for f in old.fields.values()}:
            element = f"{new.name}.{field.name}"
            changes.append(
                Change("FIELD_ADDED", "SAFE", SAFE, element, f"field {number} ({field.type}) added", None, field.where)
            )
    return changes


def _reserved(
    name: str, old: frozenset[object], new: frozenset[object], base: Where, head: Where, kind: str
) -> list[Change]:
    gone = sorted(old - new, key=str)
    if not gone:
        return []
    message = f"reserved {kind}s no longer reserved: {', '.join(map(str, gone))}"
    return [
        Change(
            f"RESERVED_{kind.upper()}_NO_DELETE",
            "WIRE_JSON" if kind == "name" else "WIRE",
            BREAKING,
            name,
            message,
            base,
            head,
            (STORED_EVENT, OLD_CLIENT),
        )
    ]


def _numbers(comment: str) -> list[str]:
    return NUMBERS.findall(comment)


def _excerpt(comment: str, length: int = 80) -> str:
    text = " ".join(comment.split())
    return text if len(text) <= length else f"{text[: length - 1]}…"


# ------------------------------------------------------------------ enums


def _enums(base: Contract, head: Contract) -> list[Change]:
    changes = []
    for name, old in base.enums.items():
        new = head.enums.get(name)
        if new is None:
            changes.append(
                Change(
                    "PACKAGE_ENUM_NO_DELETE",
                    "PACKAGE",
                    BREAKING,
                    name,
                    "enum deleted",
                    old.where,
                    None,
                    (OLD_CLIENT, GENERATED_CODE),
                )
            )
            continue
        changes += _enum_values(old, new)
    for name, new in head.enums.items():
        if name not in base.enums:
            changes.append(Change("ENUM_ADDED", "SAFE", SAFE, name, "added", None, new.where))
    return changes


def _enum_values(old: Enum, new: Enum) -> list[Change]:
    changes = []
    for number, value in old.values.items():
        now = new.values.get(number)
        element = f"{old.name}.{value.name}"
        if now is None:
            if number not in new.reserved_numbers:
                message = f"value {number} deleted and its number not reserved"
                changes.append(
                    Change(
                        "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED",
                        "WIRE",
                        BREAKING,
                        element,
                        message,
                        value.where,
                        new.where,
                        (OLD_CLIENT, STORED_EVENT),
                    )
                )
            else:
                changes.append(
                    Change(
                        "ENUM_VALUE_NO_DELETE",
                        "PACKAGE",
                        BREAKING,
                        element,
                        "value deleted (number reserved)",
                        value.where,
                        new.where,
                        (GENERATED_CODE,),
                    )
                )
        elif now.name != value.name:
            changes.append(
                Change(
                    "ENUM_VALUE_SAME_NAME",
                    "WIRE_JSON",
                    BREAKING,
                    element,
                    f"renamed to {now.name}: JSON carries the name",
                    value.where,
                    now.where,
                    (OLD_CLIENT, NEW_CLIENT),
                )
            )
    for number, value in new.values.items():
        if number not in old.values:
            changes.append(
                Change(
                    "ENUM_VALUE_ADDED",
                    "SAFE",
                    SAFE,
                    f"{new.name}.{value.name}",
                    f"value {number} added",
                    None,
                    value.where,
                )
            )
    return changes


# ------------------------------------------------------------------ services, RPCs and routes


def _methods(base: Contract, head: Contract) -> list[Change]:
    changes = []
    for name, where in base.services.items():
        if name not in head.services:
            changes.append(
                Change(
                    "PACKAGE_SERVICE_NO_DELETE",
                    "PACKAGE",
                    BREAKING,
                    name,
                    "service deleted",
                    where,
                    None,
                    (OLD_CLIENT,),
                )
            )
    for name, where in head.services.items():
        if name not in base.services:
            changes.append(Change("SERVICE_ADDED", "SAFE", SAFE, name, "added", None, where))
    for name, old in base.methods.items():
        new = head.methods.get(name)
        if new is None:
            if old.name.split("/")[0] in head.services:
                changes.append(
                    Change(
                        "RPC_NO_DELETE",
                        "PACKAGE",
                        BREAKING,
                        name,
                        "RPC deleted: callers get UNIMPLEMENTED",
                        old.where,
                        None,
                        (OLD_CLIENT,),
                    )
                )
            changes += [
                _route_change("HTTP_ROUTE_NO_DELETE", name, f"route {route} deleted", old, None) for route in old.routes
            ]
            continue
        changes += _method(old, new)
    for name, new in head.methods.items():
        if name not in base.methods:
            changes.append(Change("RPC_ADDED", "SAFE", SAFE, name, "added", None, new.where))
            changes += [
                Change("HTTP_ROUTE_ADDED", "SAFE", SAFE, name, f"route {route} added", None, new.where)
                for route in new.routes
            ]
    return changes


def _method(old: Method, new: Method) -> list[Change]:
    changes = []
    checks: list[tuple[str, str, Callable[[Method], object]]] = [
        ("RPC_SAME_REQUEST_TYPE", "WIRE", lambda m: m.input),
        ("RPC_SAME_RESPONSE_TYPE", "WIRE", lambda m: m.output),
        ("RPC_SAME_CLIENT_STREAMING", "WIRE", lambda m: m.client_streaming),
        ("RPC_SAME_SERVER_STREAMING", "WIRE", lambda m: m.server_streaming),
    ]
    for rule, category, part in checks:
        if part(old) != part(new):
            message = f"{rule.removeprefix('RPC_SAME_').replace('_', ' ').lower()}: {part(old)} → {part(new)}"
            changes.append(
                Change(rule, category, BREAKING, old.name, message, old.where, new.where, (OLD_CLIENT, NEW_CLIENT))
            )
    changes += _routes(old, new)
    before, after = documented_errors(old.comment), documented_errors(new.comment)
    if before != after:
        gained, lost = sorted(after - before), sorted(before - after)
        message = "documented errors changed: " + "; ".join(
            part
            for part in (
                f"now also {', '.join(gained)}" if gained else "",
                f"no longer {', '.join(lost)}" if lost else "",
            )
            if part
        )
        changes.append(Change("BEHAVIOUR_RPC_ERRORS", "BEHAVIOUR", REVIEW, old.name, message, old.where, new.where))
    return changes


def _routes(old: Method, new: Method) -> list[Change]:
    """Routes pair up by position (the rule, then each additional binding)."""
    changes = []
    for index, route in enumerate(old.routes):
        if index >= len(new.routes):
            changes.append(_route_change("HTTP_ROUTE_NO_DELETE", old.name, f"route {route} deleted", old, new))
            continue
        now = new.routes[index]
        for rule, part in (
            ("HTTP_SAME_VERB", "verb"),
            ("HTTP_SAME_PATH", "path"),
            ("HTTP_SAME_BODY", "body"),
            ("HTTP_SAME_RESPONSE_BODY", "response_body"),
        ):
            before, after = getattr(route, part), getattr(now, part)
            if before != after:
                message = (
                    f"{part.replace('_', ' ')} {before or '(none)'} → {after or '(none)'}; "
                    f"OpenAPI operation {openapi_operation(route)} → {openapi_operation(now)}"
                )
                changes.append(_route_change(rule, old.name, message, old, new))
    for route in new.routes[len(old.routes) :]:
        changes.append(Change("HTTP_ROUTE_ADDED", "SAFE", SAFE, new.name, f"route {route} added", None, new.where))
    return changes


def openapi_operation(route: Route) -> str:
    """The route as services/api/openapi.yaml names it: `post /v1/spaces/{spaceId}/documents`
    (variables by their JSON names, without their patterns)."""

    def variable(match: re.Match[str]) -> str:
        head, *rest = match.group(1).split("_")
        return "{" + head + "".join(part.capitalize() for part in rest) + "}"

    return f"{route.verb} {TEMPLATE_VARIABLE.sub(variable, route.path)}"


def _route_change(rule: str, element: str, message: str, old: Method, new: Method | None) -> Change:
    return Change(rule, "HTTP", BREAKING, element, message, old.where, new.where if new else None, (JSON_CLIENT,))


def breaking(changes: Iterable[Change]) -> list[Change]:
    return [change for change in changes if change.severity == BREAKING]
