"""The documentation cannot drift: its commands run, its links resolve, the site builds with --strict.

Every fenced ```console block of README.md and docs/*.md is a test: its `$ ` lines run in order
(offline, the embedded toy model, in a scratch folder holding a copy of examples/, `zsfinercam`
and `python` being this checkout's), each must exit 0, and the block's other lines must appear
in the output of the command above them (`...` stands for any text). A `<!-- not run: REASON -->`
line just before a block skips it, with that reason in pytest's summary (-ra).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
README_LINES = 200


@dataclass
class Block:
    """A ```console block: where it is, its commands with their expected output, why it is not run."""

    page: str
    line: int  # 1-based line of the opening fence
    steps: list[tuple[str, list[str]]] = field(default_factory=list)  # (command, expected output lines)
    skip: str | None = None  # the reason of a `<!-- not run: REASON -->` marker

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def console_blocks(text: str, page: str) -> list[Block]:
    """The ```console blocks of a Markdown text, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if not opening:
            i += 1
            continue
        fence, lang, start = opening.group(1), opening.group(2), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if lang == "console":
            blocks.append(_block(page, start, body, _marker(lines, start)))
    return blocks


def _marker(lines: list[str], fence: int) -> str | None:
    """The reason of a not-run marker on the last non-blank line before line `fence`, else None."""
    for line in reversed(lines[:fence]):
        if line.strip():
            found = NOT_RUN.match(line.strip())
            return found.group(1) if found else None
    return None


def _block(page: str, fence: int, body: list[str], skip: str | None) -> Block:
    block = Block(page, fence + 1, skip=skip)
    for line in body:
        if line.startswith("$ "):
            block.steps.append((line[2:].strip(), []))
        elif line.strip() and block.steps:
            block.steps[-1][1].append(line.strip())
    return block


def appears(expected: str, output: str) -> bool:
    """Whether `expected` (with `...` for any text) matches within one line of `output`."""
    pattern = ".*".join(re.escape(piece) for piece in expected.split("..."))
    return any(re.search(pattern, line) for line in output.splitlines())


ALL = [b for page in PAGES for b in console_blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT).as_posix())]


def test_the_parser_reads_commands_output_and_markers():
    text = ("x\n<!-- not run: needs a GPU -->\n\n```console\n$ zsfinercam a\nout 1\n$ b\n```\n"
            "```bash\n$ c\n```\n````console\n$ d \"e\"\n````\n")
    first, second = console_blocks(text, "p.md")
    assert (first.name, first.skip, first.steps) == ("p.md:4", "needs a GPU", [("zsfinercam a", ["out 1"]), ("b", [])])
    assert (second.skip, second.steps) == (None, [('d "e"', [])])
    assert appears("peak ... bbox", "a: peak (1, 2) bbox (0, 0, 3, 3)") and not appears("bbox ... peak", "peak bbox")


def test_the_docs_have_commands_and_every_marker_a_reason():
    assert sum(not b.skip for b in ALL) >= 5 and all(b.steps for b in ALL), [b.name for b in ALL if not b.steps]
    assert all(b.skip for b in ALL if b.skip is not None), "a not-run marker without a reason"


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    """A folder whose `zsfinercam` and `python` are this checkout's, to put first on PATH."""
    folder = tmp_path_factory.mktemp("bin")
    for name, line in (("zsfinercam", f'exec "{sys.executable}" -m zsfinercam "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        (folder / name).write_text(f"#!/bin/sh\n{line}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.parametrize("block", ALL, ids=[b.name for b in ALL])
def test_the_commands_of_the_docs_run(block, shims, tmp_path):
    if block.skip:
        pytest.skip(f"{block.name} not run: {block.skip}")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for command, expected in block.steps:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{block.name}: `{command}` exited {done.returncode}:\n{output[-2000:]}"
        missing = [line for line in expected if not appears(line, output)]
        assert not missing, f"{block.name}: `{command}` did not print {missing}:\n{output[-2000:]}"


def figure_tables(text: str) -> list[tuple[int, str]]:
    """(first line, the text around it) of each Markdown table holding 3 or more decimal figures;
    the text around is 8 lines before the table and 4 after it."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        end = i
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        if len(re.findall(r"\b\d+\.\d+", "\n".join(lines[i:end]))) >= 3:
            found.append((i + 1, "\n".join(lines[max(0, i - 8):i] + lines[end:end + 4])))
        i = end
    return found


def test_every_table_of_figures_names_the_command_that_produced_it():
    text = "x\nmade by `zsfinercam eval --synthetic 9`:\n\n| a | b |\n|---|---|\n| 0.1 | 0.2 |\n| 0.3 | 1 |\n"
    assert figure_tables(text) == [(4, "x\nmade by `zsfinercam eval --synthetic 9`:\n")]
    unnamed = [f"{page.name}:{line}" for page in PAGES for line, around in figure_tables(page.read_text())
               if not re.search(r"`(zsfinercam|python) [^`]+`", around)]
    assert unnamed == []


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_LINES
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local and [t for t in local if not (ROOT / t).exists()] == []


def test_the_readme_shows_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# README test command:") + 1]
    assert f"$ python3 -m venv .venv && . .venv/bin/activate && {command}" in (ROOT / "README.md").read_text()


def test_the_site_builds_strict_and_offline(tmp_path):
    """mkdocs build --strict: every page in the nav, every link and API reference resolves."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "api" / "index.html").is_file()
    assert "fonts.googleapis.com" not in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
