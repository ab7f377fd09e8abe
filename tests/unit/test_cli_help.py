"""`refit --help` and every subcommand's help read as re-flowed paragraphs at 80 and 120 columns.

The docstrings are hard-wrapped in the source. Rendered as they were, a help line stopped wherever
the source line did ("--requeue re-validates them after a" / "configuration change, ..."), with
room to spare on the line. A greedy wrapper never breaks a line while the next word still fits on
it, so such a break is what these tests look for, in every paragraph and every panel cell.
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from refit.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BORDER = "│"


def command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``command`` (a click command), as the words that invoke it."""
    paths = [path]
    if hasattr(command, "commands"):  # a group (typer vendors its own click, so no isinstance)
        for name, sub in command.commands.items():
            paths += command_paths(sub, (*path, name))
    return paths


LAST_CELL = re.compile(r"(?<=\S)  +(?=\S)")  # the gap before a table row's last cell


def _lines_of_text(output: str, width: int) -> list[tuple[str, int, int] | None]:
    """Each line as (text, the column its text may reach, the column a continuation starts at).

    Panel borders become spaces. In a panel a line continues the row above only when it starts at
    the description column (the last cell of the panel's first row), blank before it; outside
    panels a line continues the paragraph above at its own start. None for a blank line or a
    panel's edge, which no line continues.
    """
    rows: list[tuple[str, int, int] | None] = []
    description = None
    for line in ANSI.sub("", output).splitlines():
        stripped = line.rstrip()
        if not stripped or stripped[0] in "╭╰":
            description = None
            rows.append(None)
        elif stripped[0] == BORDER:
            right = stripped.rindex(BORDER)
            text = " " + stripped[1:right].rstrip()
            if description is None:
                gaps = list(LAST_CELL.finditer(text))
                description = gaps[-1].end() if gaps else len(text) - len(text.lstrip())
            rows.append((text, right - 1, description))  # one column of padding inside each border
        else:
            rows.append((stripped, width - 1, len(stripped) - len(stripped.lstrip())))
    return rows


def premature_breaks(output: str, width: int) -> list[str]:
    """Line pairs where the first line ends although the second line's first word fits on it.

    Args:
        output: The rendered help.
        width: The terminal width it was rendered at.

    Returns:
        The offending pairs, one string each.
    """
    rows = _lines_of_text(output, width)
    found = []
    for upper, lower in zip(rows, rows[1:], strict=False):
        if upper is None or lower is None:
            continue
        (text, reach, _), (next_text, _, continues_at) = upper, lower
        start = len(next_text) - len(next_text.lstrip())
        words = next_text.split()
        if start != continues_at or words[0].startswith("["):  # a new row, or typer's [default: ...]
            continue
        if len(text) + 1 + len(words[0]) <= reach:
            found.append(f"{text.strip()!r} / {next_text.strip()!r}")
    return found


def render_help(path: tuple[str, ...], width: int) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)}, prog_name="refit")
    assert result.exit_code == 0, result.output
    return result.output


def test_the_check_finds_the_hard_wrapped_help_it_was_written_for():
    old_panel = (
        "│ quarantine   Count quarantined rows by reason and list the latest; --requeue │\n"
        "│              re-validates them after a                                       │\n"
        "│              configuration change, moving the rows that now pass into        │\n"
        "│              feedback.                                                       │\n"
    )
    old_paragraph = (
        " Needs text and created_at, and one of satisfaction (0..1), rating or label;    \n"
        " feedback_id,                                                                   \n"
        " user_id and item_id are optional; other columns are behaviour features. Bad    \n"
    )
    assert len(premature_breaks(old_panel, 80)) == 1
    assert len(premature_breaks(old_paragraph, 80)) == 1
    reflowed = (
        "│ --keep           <int>   Newest versions kept (default:                      │\n"
        "│                          REFIT_KEEP_VERSIONS).                               │\n"
        "│                          [default: 10]                                       │\n"
    )
    assert premature_breaks(reflowed, 80) == []


@pytest.mark.parametrize("width", [80, 120])
def test_every_help_is_reflowed_at_the_terminal_width(width):
    paths = command_paths(typer.main.get_command(app))
    assert len(paths) > 20  # the root, every command, every group and its commands
    broken = {" ".join(("refit", *path)): premature_breaks(render_help(path, width), width) for path in paths}
    assert not {name: pairs for name, pairs in broken.items() if pairs}


def test_the_command_list_gives_each_command_a_one_line_summary():
    listing = render_help((), 120)
    for name in ("quarantine", "run", "drift", "gc", "serve", "predict", "demo", "up", "simulate"):
        [row] = [line for line in listing.splitlines() if line.startswith(f"{BORDER} {name} ")]
        summary = row.strip(f"{BORDER} ").removeprefix(name).strip()
        assert summary.endswith("."), summary  # the whole summary on one line, not a cut paragraph
