"""The documentation checked against the code: its programs run, its pipeline files pass
``eventmp check``, and its links resolve.

Fenced blocks are told apart by their info string: ``python`` is a complete program (run in a
subprocess, it must exit 0), ``python fragment`` is only compiled, ``toml`` is a complete
pipeline file (``eventmp check`` must accept it), ``toml fragment`` is only parsed. Any other
info string is not checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# What a docs program may take: each starts real worker processes, but only a few.
PROGRAM_TIMEOUT = 45.0
CHECK_TIMEOUT = 30.0

CHECKED_INFO = {"python", "python fragment", "toml", "toml fragment"}
# A block in one of these languages must say which kind it is: a typo would skip the check.
CHECKED_LANGUAGES = {"py", "python", "python3", "toml"}

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its info string and its text."""

    path: Path
    line: int
    info: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(text: str, path: Path = ROOT / "doc.md") -> list[Block]:
    """Every fenced code block in ``text``, with the line its opening fence is on."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` for every line outside fenced code blocks."""
    inside: str | None = None
    lines: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if inside is None:
            fence = _FENCE.match(line)
            if fence:
                inside = fence.group(1)
            else:
                lines.append((number, line))
        elif _closes(line, inside):
            inside = None
    return lines


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence``: the same character, at least as
    many, and nothing after them."""
    closing = _FENCE.match(line)
    return (
        closing is not None
        and closing.group(1)[0] == fence[0]
        and len(closing.group(1)) >= len(fence)
        and not closing.group(2).strip()
    )


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens.

    Links in the heading count by their text; hyphens and underscores are kept.
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading in ``text``; a repeated one gets ``-1``, ``-2``..."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _number, line in prose_lines(text):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(text: str, source: Path) -> list[str]:
    """Every relative link in ``text`` (a file at ``source``) that does not resolve.

    A link must name a file or directory that exists, relative to ``source``'s directory; a
    ``#anchor`` must be a heading of the Markdown file it points to (or of ``source`` itself).
    Links with a scheme (``https:``, ``mailto:``) are not followed.
    """
    problems: list[str] = []
    for number, line in prose_lines(text):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = match.group(1)
            where = f"{source.name}:{number}: {target}"
            if not target or _SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            if path_part.startswith("/"):
                problems.append(f"{where}: an absolute path (write a relative link)")
                continue
            destination = (source.parent / path_part).resolve() if path_part else source
            if not destination.exists():
                problems.append(f"{where}: no such file")
                continue
            if not anchor:
                continue
            if destination.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
                continue
            target_text = text if destination == source else destination.read_text()
            if anchor not in anchors(target_text):
                problems.append(f"{where}: no heading with that anchor")
    return problems


def program_failure(code: str, cwd: Path, timeout: float = PROGRAM_TIMEOUT) -> str | None:
    """Run ``code`` as a program in ``cwd``: None if it exits 0, else what went wrong."""
    script = cwd / "docs_program.py"
    script.write_text(code)
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=cwd,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"still running after {timeout:g} s"
    if done.returncode == 0:
        return None
    return f"exit status {done.returncode}; stderr ends with:\n{done.stderr[-2000:]}"


def pipeline_failure(text: str, cwd: Path, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Run ``eventmp check`` on ``text`` as a pipeline file: None if it passes.

    Each ``${NAME}`` the file uses is set in the environment, as a deployment would set it.
    """
    pipeline = cwd / "pipeline.toml"
    pipeline.write_text(text)
    env = _environment()
    env.update(dict.fromkeys(_ENV.findall(text), "docs-test"))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "eventmp", "check", str(pipeline)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"eventmp check still running after {timeout:g} s"
    if done.returncode == 0:
        return None
    return f"eventmp check exited {done.returncode}:\n{done.stderr[-2000:]}"


def _environment() -> dict[str, str]:
    """This environment, with this checkout's eventmp first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _blocks(info: str) -> list[Block]:
    blocks = (block for path in DOCS for block in code_blocks(path.read_text(), path))
    return [block for block in blocks if block.info == info]


def _params(info: str) -> list[object]:
    return [pytest.param(block, id=str(block)) for block in _blocks(info)]


# == the docs ====================================================================================


@pytest.mark.parametrize("block", _params("python"))
def test_python_program_runs(block: Block, tmp_path: Path) -> None:
    """A ``python`` block runs as a program, in a fresh directory, and exits 0."""
    failure = program_failure(block.text, tmp_path)
    assert failure is None, f"{block}: {failure}"


def test_python_fragments_compile() -> None:
    """Every ``python fragment`` block is valid Python."""
    for block in _blocks("python fragment"):
        compile(block.text, str(block), "exec")


@pytest.mark.parametrize("block", _params("toml"))
def test_pipeline_file_passes_check(block: Block, tmp_path: Path) -> None:
    """A ``toml`` block is a pipeline file that ``eventmp check`` accepts."""
    failure = pipeline_failure(block.text, tmp_path)
    assert failure is None, f"{block}: {failure}"


def test_toml_fragments_parse() -> None:
    """Every ``toml fragment`` block is valid TOML."""
    for block in _blocks("toml fragment"):
        try:
            tomllib.loads(block.text)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{block}: {exc}")


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_links_resolve(path: Path) -> None:
    """Every relative link names a file that exists, and every anchor a heading there."""
    assert broken_links(path.read_text(), path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_checked_languages_say_their_kind(path: Path) -> None:
    """A Python or TOML block is marked as a program, a pipeline file or a fragment."""
    unknown = [
        f"{block}: {block.info!r}"
        for block in code_blocks(path.read_text(), path)
        if block.info.split(" ", 1)[0] in CHECKED_LANGUAGES and block.info not in CHECKED_INFO
    ]
    assert unknown == []


def test_readme_has_examples_and_links_every_page() -> None:
    """The README holds a program and a pipeline file, and links every page under docs/."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    infos = [block.info for block in code_blocks(text, readme)]
    assert "python" in infos and "toml" in infos
    linked = {match.group(1).partition("#")[0] for match in _LINK.finditer(text)}
    pages = {f"docs/{path.name}" for path in DOCS if path.parent.name == "docs"}
    assert pages - linked == set()


# == the checks themselves =======================================================================


def test_code_blocks_are_found_with_their_info_and_line() -> None:
    """Fences of backticks or tildes, with or without an info string, inside a longer fence."""
    text = (
        "intro\n```python\nprint(1)\n```\n\n"
        "````\n```toml\nnot a block\n```\n````\n"
        "~~~toml\na = 1\n~~~\n"
    )
    blocks = code_blocks(text)
    assert [(b.line, b.info, b.text) for b in blocks] == [
        (2, "python", "print(1)\n"),
        (6, "", "```toml\nnot a block\n```\n"),
        (11, "toml", "a = 1\n"),
    ]


def test_slug_follows_github() -> None:
    """Lower case, punctuation dropped (hyphens and underscores kept), spaces to hyphens."""
    assert slug("What happens to an event") == "what-happens-to-an-event"
    assert slug("`[[inputs]]`") == "inputs"
    assert slug('Your own: `type = "module:Name"`') == "your-own-type--modulename"
    assert slug("`max_pending` and [the ledger](design.md)") == "max_pending-and-the-ledger"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1", "a-2"}


def test_broken_links_are_reported(tmp_path: Path) -> None:
    """A missing file, a missing anchor, an absolute path: each is reported; good links are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Its section\n")
    source = tmp_path / "page.md"
    text = (
        "# Page\n\n## Here\n\n"
        "[ok](other.md) [ok](other.md#its-section) [ok](#here) [ok](https://example.com/x)\n"
        "`[in code](missing.md)`\n"
        "[gone](missing.md) [bad](other.md#nowhere) [self](#nowhere-here) [abs](/etc/passwd)\n"
        "```\n[in a block](missing.md)\n```\n"
    )
    source.write_text(text)
    assert broken_links(text, source) == [
        "page.md:7: missing.md: no such file",
        "page.md:7: other.md#nowhere: no heading with that anchor",
        "page.md:7: #nowhere-here: no heading with that anchor",
        "page.md:7: /etc/passwd: an absolute path (write a relative link)",
    ]


def test_failing_program_is_reported(tmp_path: Path) -> None:
    """A program that exits non-zero or outlives its timeout fails; one that exits 0 does not."""
    assert program_failure("print('fine')\n", tmp_path) is None
    failure = program_failure("raise SystemExit('broken example')\n", tmp_path)
    assert failure is not None and "broken example" in failure
    assert program_failure("import time\ntime.sleep(30)\n", tmp_path, timeout=1.0) is not None


def test_failing_pipeline_file_is_reported(tmp_path: Path) -> None:
    """``eventmp check`` rejecting a pipeline file is a failure, with its message."""
    good = '[[inputs]]\npaths = ["app.log"]\n\n[[rules]]\nregex = "x"\nhandler = "print"\n'
    assert pipeline_failure(good, tmp_path) is None
    failure = pipeline_failure(good.replace('"x"', '"(x"'), tmp_path)
    assert failure is not None and "bad regular expression" in failure
