"""The contract diff, held against buf: small crafted changes of a proto, one per rule, each
run through `python -m contracts diff`'s comparison and through `buf breaking` (category FILE,
the strictest). Ours must find everything buf finds, and the cases buf does not look at:
HTTP routes, events' types and topics, documented errors and limits. Additions are safe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.diff.buf import buf_binary, buf_breaking
from contracts.diff.report import Acknowledgement, markdown, unacknowledged
from contracts.diff.rules import BREAKING, REVIEW, SAFE, Change, compare
from contracts.diff.snapshot import contract_of_dir

SHOP = """syntax = "proto3";
package shop.v1;
import "google/api/annotations.proto";
option go_package = "example.com/shop/v1";

service ShopService {
  // GetItem returns one item.
  // Errors:
  //   NOT_FOUND: no such item.
  rpc GetItem(GetItemRequest) returns (Item) {
    option (google.api.http) = {get: "/v1/items/{item_id}"};
  }
  rpc WatchItems(GetItemRequest) returns (stream Item);
}

message GetItemRequest {
  string item_id = 1;
}

message Item {
  string item_id = 1;
  // Title; 1–200 characters.
  string title = 2;
  int64 price = 3;
  repeated string tags = 4;
  oneof owner {
    string user_id = 5;
    string team_id = 6;
  }
  Kind kind = 7;
  reserved 9;
}

message Unused {
  string note = 1;
}

enum Kind {
  KIND_UNSPECIFIED = 0;
  KIND_BOOK = 1;
  KIND_TOOL = 2;
}
"""

EVENTS = """syntax = "proto3";
package events.v1;

// event_type "shop.item.sold"; topic "shop.events.v1"
message ItemSold {
  string item_id = 1;
  int64 price = 2;
}
"""


@dataclass(frozen=True)
class Case:
    file: str  # "shop" or "events"
    old: str
    new: str
    ours: str  # the rule ours must report
    severity: str = BREAKING
    buf_sees_it: bool = True


CASES = {
    "field deleted": Case("shop", "  int64 price = 3;\n", "", "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
    "field renumbered": Case("shop", "int64 price = 3;", "int64 price = 8;", "FIELD_SAME_NUMBER"),
    "field retyped": Case("shop", "int64 price = 3;", "string price = 3;", "FIELD_SAME_TYPE"),
    "JSON name changed": Case(
        "shop", "int64 price = 3;", 'int64 price = 3 [json_name = "cost"];', "FIELD_SAME_JSON_NAME"
    ),
    "field renamed": Case("shop", "int64 price = 3;", "int64 cost = 3;", "FIELD_SAME_NAME"),
    "cardinality changed": Case("shop", "int64 price = 3;", "repeated int64 price = 3;", "FIELD_SAME_CARDINALITY"),
    "field left its oneof": Case(
        "shop",
        "    string user_id = 5;\n    string team_id = 6;\n  }",
        "    string team_id = 6;\n  }\n  string user_id = 5;",
        "FIELD_SAME_ONEOF",
    ),
    "enum value deleted": Case("shop", "  KIND_TOOL = 2;\n", "", "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"),
    "enum value renamed": Case("shop", "KIND_TOOL = 2;", "KIND_TOOLS = 2;", "ENUM_VALUE_SAME_NAME"),
    "RPC deleted": Case("shop", "  rpc WatchItems(GetItemRequest) returns (stream Item);\n", "", "RPC_NO_DELETE"),
    "streaming changed": Case("shop", "returns (stream Item);", "returns (Item);", "RPC_SAME_SERVER_STREAMING"),
    "request type changed": Case("shop", "rpc GetItem(GetItemRequest)", "rpc GetItem(Item)", "RPC_SAME_REQUEST_TYPE"),
    "reserved number released": Case("shop", "  reserved 9;\n", "", "RESERVED_NUMBER_NO_DELETE"),
    "message deleted": Case("shop", "message Unused {\n  string note = 1;\n}\n", "", "PACKAGE_MESSAGE_NO_DELETE"),
    "package changed": Case("shop", "package shop.v1;", "package shop.v2;", "FILE_SAME_PACKAGE"),
    "file option changed": Case(
        "shop", 'go_package = "example.com/shop/v1"', 'go_package = "example.com/shop/v2"', "FILE_SAME_GO_PACKAGE"
    ),
    "event field retyped": Case("events", "int64 price = 2;", "string price = 2;", "FIELD_SAME_TYPE"),
    # What buf does not look at:
    "route path changed": Case(
        "shop", '{get: "/v1/items/{item_id}"}', '{get: "/v1/item/{item_id}"}', "HTTP_SAME_PATH", buf_sees_it=False
    ),
    "route verb changed": Case(
        "shop",
        '{get: "/v1/items/{item_id}"}',
        '{post: "/v1/items/{item_id}" body: "*"}',
        "HTTP_SAME_VERB",
        buf_sees_it=False,
    ),
    "route deleted": Case(
        "shop",
        ' {\n    option (google.api.http) = {get: "/v1/items/{item_id}"};\n  }',
        ";",
        "HTTP_ROUTE_NO_DELETE",
        buf_sees_it=False,
    ),
    "event type changed": Case(
        "events",
        'event_type "shop.item.sold"',
        'event_type "shop.item.purchased"',
        "EVENT_SAME_TYPE",
        buf_sees_it=False,
    ),
    "event topic changed": Case(
        "events", 'topic "shop.events.v1"', 'topic "sales.events.v1"', "EVENT_SAME_TYPE", buf_sees_it=False
    ),
    "documented errors changed": Case(
        "shop",
        "//   NOT_FOUND: no such item.",
        "//   NOT_FOUND: no such item.\n  //   PERMISSION_DENIED: not yours.",
        "BEHAVIOUR_RPC_ERRORS",
        REVIEW,
        buf_sees_it=False,
    ),
    "documented limit changed": Case(
        "shop",
        "// Title; 1–200 characters.",
        "// Title; 1–80 characters.",
        "BEHAVIOUR_FIELD_LIMITS",
        REVIEW,
        buf_sees_it=False,
    ),
    "field added": Case(
        "shop", "  Kind kind = 7;\n", "  Kind kind = 7;\n  string colour = 8;\n", "FIELD_ADDED", SAFE, buf_sees_it=False
    ),
    "route added": Case(
        "shop",
        "rpc WatchItems(GetItemRequest) returns (stream Item);",
        "rpc WatchItems(GetItemRequest) returns (stream Item) {\n"
        '    option (google.api.http) = {get: "/v1/items:watch"};\n  }',
        "HTTP_ROUTE_ADDED",
        SAFE,
        buf_sees_it=False,
    ),
}

# buf's rule → the rules of ours that report the same change.
BUF_EQUIVALENTS = {
    "FIELD_NO_DELETE": {
        "FIELD_NO_DELETE",
        "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
        "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
        "FIELD_SAME_NUMBER",
    },
    "FIELD_SAME_TYPE": {"FIELD_SAME_TYPE"},
    "FIELD_SAME_JSON_NAME": {"FIELD_SAME_JSON_NAME"},
    "FIELD_SAME_NAME": {"FIELD_SAME_NAME"},
    "FIELD_SAME_CARDINALITY": {"FIELD_SAME_CARDINALITY"},
    "FIELD_SAME_LABEL": {"FIELD_SAME_CARDINALITY"},
    "FIELD_SAME_ONEOF": {"FIELD_SAME_ONEOF"},
    "ENUM_VALUE_NO_DELETE": {"ENUM_VALUE_NO_DELETE", "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"},
    "ENUM_VALUE_SAME_NAME": {"ENUM_VALUE_SAME_NAME"},
    "RPC_NO_DELETE": {"RPC_NO_DELETE"},
    "RPC_SAME_SERVER_STREAMING": {"RPC_SAME_SERVER_STREAMING"},
    "RPC_SAME_CLIENT_STREAMING": {"RPC_SAME_CLIENT_STREAMING"},
    "RPC_SAME_REQUEST_TYPE": {"RPC_SAME_REQUEST_TYPE"},
    "RPC_SAME_RESPONSE_TYPE": {"RPC_SAME_RESPONSE_TYPE"},
    "RESERVED_MESSAGE_NO_DELETE": {"RESERVED_NUMBER_NO_DELETE", "RESERVED_NAME_NO_DELETE"},
    "MESSAGE_NO_DELETE": {"PACKAGE_MESSAGE_NO_DELETE"},
    "FILE_SAME_PACKAGE": {"FILE_SAME_PACKAGE"},
    "FILE_SAME_GO_PACKAGE": {"FILE_SAME_GO_PACKAGE"},
    # a package rename deletes everything of the old package, file by file
    "FILE_NO_DELETE": {"FILE_NO_DELETE", "FILE_SAME_PACKAGE"},
    "PACKAGE_NO_DELETE": {"PACKAGE_NO_DELETE", "FILE_SAME_PACKAGE"},
    "PACKAGE_MESSAGE_NO_DELETE": {"PACKAGE_MESSAGE_NO_DELETE", "FILE_SAME_PACKAGE"},
    "PACKAGE_SERVICE_NO_DELETE": {"PACKAGE_SERVICE_NO_DELETE", "FILE_SAME_PACKAGE"},
    "PACKAGE_ENUM_NO_DELETE": {"PACKAGE_ENUM_NO_DELETE", "FILE_SAME_PACKAGE"},
}


def write_tree(root: Path, shop: str, events: str) -> Path:
    (root / "shop" / "v1").mkdir(parents=True)
    (root / "events" / "v1").mkdir(parents=True)
    (root / "shop" / "v1" / "shop.proto").write_text(shop)
    (root / "events" / "v1" / "events.proto").write_text(events)
    return root


def trees(tmp_path: Path, case: Case) -> tuple[Path, Path]:
    sources = {"shop": SHOP, "events": EVENTS}
    assert case.old in sources[case.file], "the case must change something that is there"
    changed = {**sources, case.file: sources[case.file].replace(case.old, case.new, 1)}
    base = write_tree(tmp_path / "base", SHOP, EVENTS)
    head = write_tree(tmp_path / "head", changed["shop"], changed["events"])
    return base, head


def ours(base: Path, head: Path) -> list[Change]:
    return compare(contract_of_dir(base), contract_of_dir(head))


@pytest.fixture(scope="module")
def buf() -> Path:
    binary = buf_binary()
    if binary is None:
        pytest.skip("buf is not installed and npm is not there to install it (tools/package.json)")
    return binary


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_change_is_found_with_its_rule_and_severity(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    changes = ours(*trees(tmp_path, case))
    found = [c for c in changes if c.rule == case.ours]
    assert found, f"{name}: expected {case.ours}, got {[(c.rule, c.element) for c in changes]}"
    assert all(c.severity == case.severity for c in found)
    if case.severity == SAFE:
        assert not [c for c in changes if c.severity != SAFE], "an addition is not a break"
    if case.severity == BREAKING:
        assert all(c.breaks for c in found), "a break says whom it breaks"
        assert all(c.base is not None and c.base.line > 0 for c in found), "a break says where it was"


@pytest.mark.parametrize("name", sorted(CASES))
def test_ours_finds_everything_buf_finds(tmp_path: Path, buf: Path, name: str) -> None:
    case = CASES[name]
    base, head = trees(tmp_path, case)
    changes = ours(base, head)
    rules = {c.rule for c in changes if c.severity == BREAKING}
    findings = buf_breaking(buf, base, head)
    if case.buf_sees_it:
        assert findings, f"{name}: buf was expected to find this change"
    else:
        assert not findings, f"{name}: buf finds {findings}; move the case to those buf sees"
    for finding in findings:
        equivalents = BUF_EQUIVALENTS.get(finding.rule)
        assert equivalents is not None, f"{name}: buf's {finding.rule} has no equivalent listed: {finding.message}"
        assert rules & equivalents, f"{name}: buf found {finding.rule} ({finding.message}); ours found {sorted(rules)}"


def test_a_change_to_an_events_wire_format_says_stored_events_break(tmp_path: Path) -> None:
    changes = ours(*trees(tmp_path, CASES["event field retyped"]))
    [change] = [c for c in changes if c.rule == "FIELD_SAME_TYPE"]
    assert change.category == "EVENT"
    assert "stored or in-flight event → new consumer" in change.breaks


def test_the_markdown_report_lists_breaks_with_places_and_acknowledgements(tmp_path: Path) -> None:
    changes = ours(*trees(tmp_path, CASES["route path changed"]))
    acknowledged = [
        Acknowledgement("HTTP_SAME_PATH", "shop.v1.ShopService/GetItem", "the old path was never published")
    ]
    report = markdown(changes, "main", "WORKTREE", acknowledged)
    assert "| HTTP | HTTP_SAME_PATH | `shop.v1.ShopService/GetItem` |" in report
    assert "proto/shop/v1/shop.proto:10" in report
    assert "acknowledged: the old path was never published" in report
    assert unacknowledged(changes, acknowledged) == []
    assert unacknowledged(changes, []) != []


def test_no_change_no_report(tmp_path: Path) -> None:
    base = write_tree(tmp_path / "base", SHOP, EVENTS)
    head = write_tree(tmp_path / "head", SHOP, EVENTS)
    assert ours(base, head) == []
