"""Each shipped game's page in docs/games/ (and the arena's section of docs/protocol.md) names exactly the client
messages and fields its schemas accept, and docs/protocol.md lists every shipped game."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from game.api import GameDefinition, message_type
from server.rooms.catalog import installed_games

DOCS = Path(__file__).resolve().parent.parent / "docs"
SHIPPED = ("arena", "dice", "relay", "tictactoe", "typing")
ROW = re.compile(r"^\| `(?P<type>[a-z_]+)` \| (?P<fields>[^|]*) \|", re.MULTILINE)


def documented(table: str) -> dict[str, set[str]]:
    """Message types of a `| type | fields | rules |` table, with the fields named in backticks."""
    return {row["type"]: set(re.findall(r"`([a-z_]+)`", row["fields"])) for row in ROW.finditer(table)}


def schema_fields(definition: GameDefinition) -> dict[str, set[str]]:
    return {message_type(cls): {field.encode_name for field in msgspec.structs.fields(cls)}
            for cls in definition.messages}


def messages_table(mode: str) -> str:
    if mode == "arena":
        text = (DOCS / "protocol.md").read_text()
        return text.split("## Client → server", 1)[1].split("\n## ", 1)[0]
    text = (DOCS / "games" / f"{mode}.md").read_text()
    return text.split("## Messages", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("mode", SHIPPED)
def test_a_games_documented_messages_are_its_schemas(mode: str) -> None:
    definition = installed_games()[mode]
    table = documented(messages_table(mode))
    host = {"hello", "chat", "leave", "ping"}
    game_rows = {kind: fields for kind, fields in table.items() if kind not in host}
    assert game_rows == schema_fields(definition)


@pytest.mark.parametrize("mode", SHIPPED)
def test_a_games_page_documents_its_state_events_errors_and_result(mode: str) -> None:
    if mode == "arena":
        return  # docs/protocol.md is the arena's page: its sections are checked by tests/test_protocol.py
    text = (DOCS / "games" / f"{mode}.md").read_text()
    for section in ("## Messages", "## State", "## Events", "## Errors", "## Result", "## Options"):
        assert section in text, f"docs/games/{mode}.md has no {section}"
    for figure in installed_games()[mode].figures:
        assert f"`{figure}`" in text.split("## Result", 1)[1], f"figure {figure} is not described"


def test_the_protocol_page_lists_every_shipped_game_with_its_page() -> None:
    text = (DOCS / "protocol.md").read_text().split("## Games", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    assert listed == set(SHIPPED)
    for mode in SHIPPED:
        if mode != "arena":
            assert f"(games/{mode}.md)" in text and (DOCS / "games" / f"{mode}.md").exists()


def test_the_documentation_check_sees_a_missing_field() -> None:
    """The comparison above can fail: a table that forgot a field differs from the schema."""
    definition = installed_games()["relay"]
    table = documented(messages_table("relay").replace("`to` (int ≥ 1, optional)", "a target"))
    assert table != schema_fields(definition)
