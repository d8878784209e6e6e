"""Writes `docs/configuration.md` from the settings object, so that the page and the code cannot drift
(`tests/test_operations.py` checks that the page is what this would write).

    .venv/bin/python -m server.ops.configdoc            # rewrite docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from server.ops.settings import DEV_SECRET, Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

HEAD = """# Configuration

Every setting of a node is one field of `server/ops/settings.py`'s `Settings`. Each is read from its environment
variable, and a `tickroom serve` flag of the same name overrides it (`tickroom serve --help` lists them with
their defaults). Values are validated once at start; a bad one stops the node with an error naming the setting
and its variable (exit code 2). In `production` (`TICKROOM_ENV`), a node refuses to start with the development
JWT secret or one shorter than 32 characters.

This page is generated: `python -m server.ops.configdoc` writes it again after a change to the settings.

| setting | environment variable | flag | default | range | what it is |
| --- | --- | --- | --- | --- | --- |
"""


def _default(field: dataclasses.Field[object]) -> str:
    value = field.default
    if value == DEV_SECRET:
        return "(the development secret)"
    if value == "":
        return "(unset)"
    return f"`{value}`"


def markdown() -> str:
    rows = []
    for field in dataclasses.fields(Settings):
        low, high = field.metadata["low"], field.metadata["high"]
        bounds = f"{low:g} to {high:g}" if low is not None else ""
        help_text = str(field.metadata["help"]).replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{field.metadata['env']}` | `--{field.name.replace('_', '-')}` | "
                    f"{_default(field)} | {bounds} | {help_text} |")
    return HEAD + "\n".join(rows) + "\n"


def main() -> int:
    PAGE.write_text(markdown())
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
