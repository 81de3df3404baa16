"""mkdocs hooks: the reference pages are written from the code when the site is built.

A page holds a marker, ``<!-- generated: NAME -->``, that the hook replaces: ``config`` (every
config key from the schema's dataclasses, ``densenet_exp.config.reference``), ``runs`` (the help
of every ``python -m densenet_exp.runs`` command, from its argparse), ``predict`` (predict's keys).
"""

from __future__ import annotations

import os
import re

MARKER = re.compile(r"<!-- generated: (\w+) -->")


def _runs() -> str:
    from densenet_exp.sweeps.cli import parser, subcommands

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it
    top = parser()
    out = ["```text", top.format_help().rstrip(), "```"]
    for name, sub in subcommands(top).items():
        out += ["", f"## `runs {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out)


def _predict() -> str:
    from densenet_exp.predict import __doc__ as usage

    return "```text\n" + (usage or "").strip() + "\n```"


def _config() -> str:
    from densenet_exp.config.reference import reference_markdown

    return reference_markdown()


GENERATORS = {"config": _config, "runs": _runs, "predict": _predict}


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)
