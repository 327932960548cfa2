"""README.md and docs/ say what the code does: the flag tables are the settings' own help, the quick start is what
CI runs, every page is in the MkDocs nav, and no dated log, load average or commit hash sits in them.

Dated measurements belong in examples/results/ (each with its date, machine and command), not in the README.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from openrlhf_fair.cli.flags import FLAG_SETS, markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the markdown section whose heading starts with `heading` (up to the next heading of any level)."""
    match = re.search(rf"^#+ {re.escape(heading)}[^\n]*\n(.*?)(?=^#+ |\Z)", text, flags=re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


def code_lines(block_text: str) -> list[str]:
    """The command lines of the first ```bash block, comments stripped."""
    block = re.search(r"```bash\n(.*?)```", block_text, flags=re.S)
    assert block, "no bash block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_readme_is_short():
    assert len(readme().splitlines()) <= 220


@pytest.mark.parametrize("command", sorted(FLAG_SETS))
def test_flag_tables_are_the_settings_help(command):
    """Each flag table between <!-- flags:CMD --> markers, in the README and in docs/, is exactly what the settings
    generate (after a help text changed: `python tests/test_fair_readme.py` rewrites them)."""
    table = markdown_table(command)
    assert table.count("\n| `--") == len(table.splitlines()) - 2 >= 6
    tables = {}
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert text.count(f"<!-- flags:{command} -->") == text.count(f"<!-- /flags:{command} -->")
        pattern = rf"<!-- flags:{command} -->\n(.*?)\n<!-- /flags:{command} -->"
        tables[path] = re.findall(pattern, text, flags=re.S)
        for shown in tables[path]:
            assert shown == table, f"{path.name}: the {command} flag table differs from the settings' help"
    assert tables[README], f"README has no flag table for {command}"
    assert any(shown for path, shown in tables.items() if path != README), f"docs/ has no flag table for {command}"


def test_quick_start_is_two_commands_and_ci_runs_them():
    """Command 1 is the installer then the demo; command 2 is the test command .ci/run runs after the installer."""
    commands = code_lines(section(readme(), "Quick start"))
    assert len(commands) == 2, commands
    install, demo = [part.strip() for part in commands[0].split("&&")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f'part "install (OpenRLHF default release)" {install}\n' in ci
    assert f'part "pytest, whole suite" {commands[1]}\n' in ci
    assert ci.index(install) < ci.index(commands[1])
    argv = shlex.split(demo)
    assert argv[0] == ".venv/bin/openrlhf-fair" and argv[1] == "demo"

    from openrlhf_fair.demo.cli import build_parser

    build_parser().parse_args(argv[2:])  # the demo accepts the arguments as written (exits 2 otherwise)


def test_readme_demo_commands_parse():
    """Every `openrlhf-fair demo ...` the README shows parses with the demo's own parser."""
    from openrlhf_fair.demo.cli import build_parser

    shown = re.findall(r"openrlhf-fair demo((?: --?[\w-]+(?: [\w.]+)?)*)", readme())
    assert shown
    for args in shown:
        build_parser().parse_args(shlex.split(args))


def test_ci_builds_the_docs_strictly():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/mkdocs build --strict" in ci
    install = ci.index('part "install (OpenRLHF default release)" python3 -m openrlhf_fair.install\n')
    assert install < ci.index(".venv/bin/mkdocs build --strict")


def test_every_docs_page_is_in_the_nav():
    """mkdocs build --strict also fails on this (validation.nav.omitted_files: warn); this says it without mkdocs."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r":\s*(\S+\.md)\s*$", config, flags=re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == in_nav


def test_readme_links_exist():
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme()):
        assert (ROOT / target).exists(), target


@pytest.mark.parametrize("path", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_dates_loads_or_commit_hashes(path):
    text = path.read_text(encoding="utf-8")
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text), "dates belong in examples/results/"
    assert "load average" not in text.lower()
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", h) and re.search(r"\d", h)]
    assert not hashes, f"commit hashes belong in examples/results/: {hashes}"


def regenerate() -> None:
    """Rewrite every flag table between markers in README.md and docs/ from the settings."""
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for command in FLAG_SETS:
            pattern = rf"(<!-- flags:{command} -->\n).*?(\n<!-- /flags:{command} -->)"
            text = re.sub(pattern, lambda m: m.group(1) + markdown_table(command) + m.group(2), text, flags=re.S)
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":  # python tests/test_fair_readme.py: regenerate the flag tables after a help text changed
    regenerate()
