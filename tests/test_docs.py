"""The documentation matches the code: every command and option of the CLI
is in docs/cli.md, the README's links lead somewhere, and the README stays
short."""
import argparse
import re
from pathlib import Path

import pytest

from quantkl.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_is_in_the_cli_doc(name):
    doc = (ROOT / "docs" / "cli.md").read_text()
    assert f"### {name}" in doc or f"`quantkl {name} " in doc, name
    for action in commands()[name]._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option in doc, (name, option)


def test_readme_is_short_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (ROOT / target).exists(), target
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), (doc.name, target)
