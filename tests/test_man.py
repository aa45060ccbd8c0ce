"""The man pages under man/ keep up with the command line.

Every long option that `rnnlm SUBCOMMAND --help` shows must be documented in
man/rnnlm-SUBCOMMAND.1 (with its default), the overview page must list every
subcommand, and every page must render without groff warnings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from rnnlm.cli import app

MAN_DIR = Path(__file__).resolve().parent.parent / "man"
OVERVIEW = MAN_DIR / "rnnlm.1"

ROOT_COMMAND = typer.main.get_command(app)
SUBCOMMANDS = sorted(ROOT_COMMAND.commands)  # type: ignore[attr-defined]
ALL_PAGES = [OVERVIEW] + [MAN_DIR / f"rnnlm-{name}.1" for name in SUBCOMMANDS]


def roff_to_text(source: str) -> str:
    """The roff source with escaped hyphens made plain and font changes removed."""
    text = source.replace("\\-", "-")
    return re.sub(r"\\f(?:[BIRP]|\[[A-Z]*\])", "", text)


def page_text(path: Path) -> str:
    assert path.is_file(), f"{path} is missing"
    return roff_to_text(path.read_text(encoding="utf-8"))


def long_options(command) -> list[str]:  # type: ignore[no-untyped-def]
    """Every long option name of a Click command, both halves of --flag/--no-flag, without --help."""
    names: list[str] = []
    for param in command.params:
        for name in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if name.startswith("--") and name != "--help" and name not in names:
                names.append(name)
    return names


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def option_blocks(text: str) -> list[tuple[str, str]]:
    """(tag line, whole paragraph) for every .TP paragraph of a page."""
    blocks = []
    for chunk in re.split(r"^\.TP[^\n]*\n", text, flags=re.MULTILINE)[1:]:
        body = re.split(r"^\.(?:SH|SS|PP|P|LP|TP)\b", chunk, flags=re.MULTILINE)[0]
        tag = body.split("\n", 1)[0]
        blocks.append((tag, body))
    return blocks


def option_block(text: str, option: str) -> str | None:
    for tag, body in option_blocks(text):
        if mentions(tag, option):
            return body
    return None


def default_shown(param) -> str | None:  # type: ignore[no-untyped-def]
    """The default the man page must state literally, or None where words describe it."""
    default = param.default
    if param.required or default is None or isinstance(default, bool) or callable(default):
        return None
    if isinstance(default, (list, tuple)) or default == "":
        return None
    return str(default)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_long_option_is_in_the_subcommand_page(name: str) -> None:
    text = page_text(MAN_DIR / f"rnnlm-{name}.1")
    options = long_options(ROOT_COMMAND.commands[name])  # type: ignore[attr-defined]
    assert options, f"rnnlm {name} has no options?"
    missing = [option for option in options if not mentions(text, option)]
    assert not missing, f"man/rnnlm-{name}.1 does not mention {missing}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_has_its_own_entry_with_its_default(name: str) -> None:
    text = page_text(MAN_DIR / f"rnnlm-{name}.1")
    command = ROOT_COMMAND.commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        opts = [o for o in [*param.opts, *getattr(param, "secondary_opts", [])] if o.startswith("--")]
        if not opts or "--help" in opts:
            continue
        block = option_block(text, opts[0])
        assert block is not None, f"man/rnnlm-{name}.1 has no .TP entry for {opts[0]}"
        if param.required:
            continue
        assert "Default" in block, f"man/rnnlm-{name}.1: the entry for {opts[0]} gives no default"
        shown = default_shown(param)
        if shown is not None:
            assert shown in block, f"man/rnnlm-{name}.1: the entry for {opts[0]} does not show its default {shown!r}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_page_has_the_usual_sections(name: str) -> None:
    source = (MAN_DIR / f"rnnlm-{name}.1").read_text(encoding="utf-8")
    assert re.search(rf"^\.TH RNNLM\\-{name.upper()} 1 ", source, flags=re.MULTILINE)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert re.search(rf'^\.SH "?{section}"?\s*$', source, flags=re.MULTILINE), f"rnnlm-{name}.1 lacks {section}"


def test_overview_page_lists_every_subcommand() -> None:
    text = page_text(OVERVIEW)
    for name in SUBCOMMANDS:
        assert re.search(rf"^\.B {re.escape(name)}\s*$", text, flags=re.MULTILINE), f"rnnlm.1 does not list {name}"
        assert f"rnnlm-{name} (1)" in text, f"rnnlm.1 does not refer to rnnlm-{name}(1)"


def test_overview_page_documents_the_global_options() -> None:
    text = page_text(OVERVIEW)
    missing = [option for option in long_options(ROOT_COMMAND) if not mentions(text, option)]
    assert not missing, f"man/rnnlm.1 does not mention {missing}"


def test_no_stray_man_pages() -> None:
    expected = {path.name for path in ALL_PAGES}
    present = {path.name for path in MAN_DIR.glob("*.1")}
    assert present == expected, f"man pages without a subcommand: {sorted(present - expected)}"


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda path: path.name)
def test_page_renders_without_groff_warnings(page: Path) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    result = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"groff warns about {page.name}:\n{result.stderr}"
