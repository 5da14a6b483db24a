"""The README and docs/ hold together: every relative link resolves (and its anchor, where it names one), every
`autokd ...` command in their code blocks parses with the CLI's own parser, and the CLI reference lists every
option of every command."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from autokd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in code_free_lines(page):
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def code_free_lines(page: Path) -> list[str]:
    lines, inside = [], False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def commands(page: Path) -> list[str]:
    """`autokd ...` command lines (continuations joined) of the page's code blocks, fenced (not python/yaml) or
    indented."""
    found, inside, lang, pending = [], False, "", ""
    for line in page.read_text().splitlines():
        fence = FENCE.match(line)
        if fence:
            inside, lang = not inside, fence.group(1)
            continue
        in_code = (inside and lang not in ("python", "yaml")) or (not inside and line.startswith("    "))
        text = line.strip()
        if pending:
            pending += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                found.append(pending)
                pending = ""
            continue
        if not in_code:
            continue
        text = text.removeprefix("$ ")
        if text.split(" ", 1)[0] == "autokd":
            if text.endswith("\\"):
                pending = text.rstrip("\\").strip()
            else:
                found.append(text.split("  #")[0].strip())
    return found


def test_the_readme_is_a_short_front_page_that_reaches_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {(ROOT / target.split("#")[0]).resolve() for target in LINK.findall(readme)}
    index = ROOT / "docs" / "README.md"
    from_index = {(index.parent / t.split("#")[0]).resolve() for t in LINK.findall(index.read_text())}
    for page in PAGES[1:]:
        assert page in linked or page in from_index, f"{page.name} is reachable from neither README nor docs/"
    assert index in linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    bad = []
    for target in LINK.findall("\n".join(code_free_lines(page))):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor}")
    assert not bad, bad


def sketch_args(sub: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`...` in a command stands for options left out: an option's value becomes a placeholder, others go."""
    takes_value = {s for a in sub._actions if a.nargs != 0 for s in a.option_strings}
    out = []
    for i, token in enumerate(argv):
        if token == "...":
            if i and argv[i - 1] in takes_value:
                out.append("X")
            continue
        out.append(token)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_autokd_command_in_a_code_block_parses(page, capsys):
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in commands(page):
        argv = shlex.split(command)[1:]
        assert argv and argv[0] in subs, f"{page.name}: unknown command in {command!r}"
        sub = subs[argv[0]]
        args = argv[1:]
        if "..." in args:
            args = sketch_args(sub, args)
            for action in sub._actions:
                action.required = False
        try:
            sub.parse_args(args)
        except SystemExit as exit_:
            raise AssertionError(f"{page.name}: {command!r} does not parse: {capsys.readouterr().err.strip()}") \
                from exit_
        finally:
            parser = build_parser()
            subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_the_pages_hold_commands_to_check():
    assert len(commands(ROOT / "README.md")) >= 4
    assert sum(len(commands(p)) for p in PAGES) >= 20


def test_the_cli_reference_lists_every_option_of_every_command():
    parser = build_parser()
    text = (ROOT / "docs" / "cli.md").read_text()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = []
    for name, sub in subs.items():
        section = text.split(f"## `autokd {name}`", 1)
        assert len(section) == 2, f"docs/cli.md has no section for autokd {name}"
        body = section[1].split("\n## ", 1)[0]
        missing += [f"{name} {s}" for a in sub._actions for s in a.option_strings
                    if s not in ("-h", "--help") and f"`{s}" not in body]
    assert not missing, f"options missing from docs/cli.md: {missing}"
