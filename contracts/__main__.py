"""`python -m contracts diff [BASE] [HEAD]`: the contract review (see contracts.diff)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contracts.diff.report import ACKNOWLEDGEMENTS, as_json, load_acknowledgements, markdown, unacknowledged
from contracts.diff.rules import compare
from contracts.diff.snapshot import WORKING_TREE, contract_at, default_base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts")
    commands = parser.add_subparsers(dest="command", required=True)
    diff = commands.add_parser("diff", help="what changed in proto/ between two versions, and whom it breaks")
    diff.add_argument("base", nargs="?", help="a git ref (default: the merge-base with main)")
    diff.add_argument("head", nargs="?", default=WORKING_TREE, help=f"a git ref, or {WORKING_TREE} (the default)")
    diff.add_argument("--format", choices=("markdown", "json"), default="markdown")
    diff.add_argument("--output", type=Path, help="write the report here as well as to stdout")
    diff.add_argument("--acknowledged", type=Path, default=ACKNOWLEDGEMENTS, help="reviewed breaking changes")
    args = parser.parse_args(argv)

    base = args.base or default_base()
    changes = compare(contract_at(base), contract_at(args.head))
    acknowledgements = load_acknowledgements(args.acknowledged)
    render = markdown if args.format == "markdown" else as_json
    report = render(changes, base, args.head, acknowledgements)
    sys.stdout.write(report)
    if args.output:
        args.output.write_text(report)
    open_breaks = unacknowledged(changes, acknowledgements)
    if open_breaks:
        print(
            f"{len(open_breaks)} breaking change(s) not acknowledged in {args.acknowledged}: acknowledge each "
            "(rule, element, reason) once reviewed, or undo it",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
