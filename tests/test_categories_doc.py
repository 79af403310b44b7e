"""docs/messages.md's category table is the defaults the code registers, row for row: an operator
maps their platform's codes from that page, so it must not drift from agent/rules and agent/faults."""

from __future__ import annotations

import re

from agent.faults import DEFAULT_CATEGORIES
from agent.rules import rule_types
from tests.helpers import REPO

ROW = re.compile(r"^\| `([a-z_]+)` \| (\S+) \| (\S+) \| `([^`]+)` \| (.+) \|$")


def documented() -> dict[str, tuple[str, str, str, str]]:
    text = (REPO / "docs" / "messages.md").read_text(encoding="utf-8")
    table = text[text.index("### Categories"):].split("\n\n")
    rows = [ROW.match(line) for block in table if block.startswith("| rule / fault") for line in block.splitlines()]
    return {m[1]: (m[2], m[3], m[4], m[5]) for m in rows if m}


def test_the_table_lists_every_default_as_registered():
    defaults = {name: t.category for name, t in rule_types().items()} | {
        fault.value: category for fault, category in DEFAULT_CATEGORIES.items()}
    rows = documented()
    assert sorted(rows) == sorted(defaults)
    for name, category in defaults.items():
        assert rows[name][:3] == (category.major, category.minor, category.code), name


def test_every_row_says_where_its_code_comes_from():
    for name, (_, _, _, source) in documented().items():
        assert "*own*" in source or "unverified" in source, f"{name}: a code without an honest source"
