"""``--help`` that names every option's default, for both commands' parsers."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its
    default. A None default is not appended: "unset" says nothing, so such an option's
    help says itself what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default in (None, argparse.SUPPRESS)
            or "default" in text
        ):
            return text
        shown = "off" if action.default is False else "%(default)s"
        return f"{text} (default: {shown})"


def document_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and every subcommand parser under it :class:`DefaultsHelpFormatter`."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                document_defaults(sub)
    return parser
