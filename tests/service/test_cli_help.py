"""Every option of every command says what it does and its default; the choices the docs
name for an option (``--preset a|b``) are exactly the command's."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from fashion_florence_client.cli import build_parser as client_parser
from fashion_florence_client.cli_help import DefaultsHelpFormatter
from service.cli import build_parser
from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _in_required_group(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    return any(
        group.required and action in group._group_actions
        for group in parser._mutually_exclusive_groups
    )


def _options() -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    for root in (build_parser(), client_parser()):
        for path, parser in _parsers(root):
            for action in parser._actions:
                if action.option_strings and not isinstance(action, argparse._HelpAction):
                    yield f"{root.prog} {' '.join(path)} {action.option_strings[0]}", parser, action


@pytest.mark.parametrize(
    ("name", "parser", "action"), [pytest.param(*option, id=option[0]) for option in _options()]
)
def test_every_option_has_help_naming_its_default(
    name: str, parser: argparse.ArgumentParser, action: argparse.Action
) -> None:
    assert parser.formatter_class is DefaultsHelpFormatter, name
    assert action.help, f"{name} has no help text"
    if action.required or _in_required_group(parser, action):
        return
    shown = DefaultsHelpFormatter(prog="x")._get_help_string(action) or ""
    if isinstance(action, argparse._StoreTrueAction):
        assert shown.endswith("(default: off)"), name
    else:  # given, or said in words ("default: FF_DEVICE, else auto")
        assert "default" in shown, f"{name}: the help does not say its default: {shown!r}"


def test_help_renders_defaults() -> None:
    train = dict(_parsers(build_parser()))[("train",)]
    text = train.format_help()
    assert "(default: 0.0002)" in text
    assert "(default: decoder)" in text


_DOC_CHOICES = re.compile(
    r"(--[a-z][a-z0-9-]*)[ =]\[?([a-z0-9][a-z0-9-]*(?:\|[a-z0-9][a-z0-9-]*)+)"
)


def _doc_choice_lists() -> Iterator[tuple[str, str, tuple[str, ...], list[str]]]:
    """(file:line, option, subcommand path, choices) for each ``--opt a|b|c`` in a command."""
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            command = re.search(r"fashion-florence ((?:[a-z][a-z-]* ?)+)", line)
            if command is None:
                continue
            for option, choices in _DOC_CHOICES.findall(line):
                yield (
                    f"{doc.name}:{number}",
                    option,
                    tuple(command.group(1).split()),
                    choices.split("|"),
                )


def _command(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parsers = dict(_parsers(build_parser()))
    for end in range(len(words), 0, -1):
        if words[:end] in parsers:
            return parsers[words[:end]]
    raise AssertionError(f"no command {' '.join(words)}")


def test_the_docs_name_each_options_choices_as_the_command_does() -> None:
    found = list(_doc_choice_lists())
    assert {option for _, option, _, _ in found} >= {"--preset", "--profile"}
    for where, option, words, choices in found:
        parser = _command(words)
        (action,) = [a for a in parser._actions if option in a.option_strings]
        assert action.choices is not None, where
        assert sorted(choices) == sorted(action.choices), f"{where}: {option} {choices}"
