"""eventmp.trial and `eventmp test`: rules tried on sample lines and log files, no action run."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli import pipeline_file

from eventmp import Event, cli
from eventmp.pipeline import Pipeline, load_pipeline
from eventmp.tail import FileTailGenerator, Rule
from eventmp.trial import MATCHED, NO_MATCH, SKIPPED, check_line, pieces

PIPELINE = """
[[inputs]]
name = "auth"
paths = ["auth.log"]

[[rules]]
name = "failed"
regex = 'Failed password for (invalid user )?(?P<user>.*) from (?P<ip>[0-9a-f:.]+) port \\d+ ssh2$'
exclude = 'for trusted '
quick = true
handlers = [
  { type = "count", count = 3, window = "10m", key = "{ip}" },
  { type = "json", file = "alerts.jsonl", fields = ["user", "ip"] },
  { type = "command", argv = ["touch", "{MARKER}", "{ip}"] },
  { type = "webhook", url = "https://alice:s3cret@hooks.example.com/T0KEN?ip={ip}&user={user}" },
  { type = "mail", to = "ops@example.com", subject = "failed: {user}" },
  { type = "print", file = "printed.txt", format = "{ip} {user}" },
]

[[rules]]
name = "any-failure"
regex = 'Failed (?P<what>\\w+)'
handler = { type = "exec", command = "open('EXEC_RAN', 'w')" }

[[rules]]
name = "session"
regex = 'session (opened|closed)'
handler = "print"
"""


def trial_pipeline(tmp_path: Path) -> Path:
    text = PIPELINE.replace("{MARKER}", str(tmp_path / "COMMAND_RAN"))
    return pipeline_file(tmp_path, text.replace("EXEC_RAN", str(tmp_path / "EXEC_RAN")))


def run_test(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
    try:
        status = cli.main(["test", *args])
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return status, out, err


def test_a_sample_line_shows_matches_groups_and_rendered_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A matching line shows each rule's verdict, its groups and every template, filled."""
    pipeline = trial_pipeline(tmp_path)
    line = "Failed password for bob&ip=1 from 203.0.113.6 port 22 ssh2"
    status, out, _err = run_test(capsys, str(pipeline), line)
    assert status == 0
    assert f"line 1: {line}" in out
    assert f"  rule failed: matched '{line}'" in out
    assert "groups: 1=(not in the match) 2='bob&ip=1' 3='203.0.113.6' user='bob&ip=1'" in out
    assert "handler[1] count: key = '203.0.113.6'" in out
    assert "handler[2] json: fields = user=bob&ip=1, ip=203.0.113.6" in out
    assert f"handler[3] command: argv = touch {tmp_path / 'COMMAND_RAN'} 203.0.113.6" in out
    # The URL's own text (user, password, path) stays hidden; each field shows as sent.
    assert (
        "handler[4] webhook: url = https://***@hooks.example.com/*** with "
        "ip=203.0.113.6, user=bob%26ip%3D1" in out
    )
    assert "s3cret" not in out and "T0KEN" not in out
    assert "handler[5] mail: subject = 'failed: bob&ip=1'; body = '" in out
    assert "handler[6] print: format = '203.0.113.6 bob&ip=1'" in out
    assert "  rule any-failure: skipped (quick rule failed matched first)" in out
    assert "  rule session: no match" in out


def test_no_action_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trying lines writes no file, runs no command and no exec code."""
    pipeline = trial_pipeline(tmp_path)
    log = tmp_path / "auth.log"
    log.write_text("Failed password for root from 192.0.2.1 port 22 ssh2\nFailed key\n")
    status, _out, _err = run_test(
        capsys,
        str(pipeline),
        "Failed password for x from 192.0.2.9 port 1 ssh2",
        "--file",
        str(log),
    )
    assert status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auth.log", "pipeline.toml"]


def test_excluded_and_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An excluded rule says what its exclude matched; control characters show as escapes."""
    pipeline = trial_pipeline(tmp_path)
    line = "Failed password for trusted \x1b[2Jroot\u2028 from 192.0.2.1 port 22 ssh2"
    status, out, _err = run_test(capsys, str(pipeline), line)
    assert status == 0  # any-failure matched, the quick rule being excluded
    assert "\x1b" not in out and "\u2028" not in out
    assert "line 1: Failed password for trusted \\x1b[2Jroot\\u2028 from" in out
    assert "  rule failed: excluded (exclude matched 'for trusted ')" in out
    assert "  rule any-failure: matched 'Failed password'" in out
    assert "    handler[1] exec: runs code, not run here" in out


def test_exit_1_when_nothing_matches_and_2_for_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No line matching any rule exits 1; a bad pipeline, no lines or a bad --input exit 2."""
    pipeline = trial_pipeline(tmp_path)
    assert run_test(capsys, str(pipeline), "nothing here", "nor here")[0] == 1
    assert run_test(capsys, str(pipeline), "-", stdin="nothing\n")[0] == 1
    assert run_test(capsys, str(pipeline), "x", "--input", "nope")[0] == 2
    assert run_test(capsys, str(pipeline), "--file", str(tmp_path / "missing.log"))[0] == 2
    text = pipeline.read_text().replace("(?P<what>", "(?P<what")
    bad = pipeline_file(tmp_path, text, "bad.toml")
    status, _out, err = run_test(capsys, str(bad), "x")
    assert status == 2 and 'rules[2] ("any-failure").regex' in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["test", str(pipeline)])
    assert exited.value.code == 2


def test_lines_from_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'-' reads the sample lines from stdin, one by one."""
    pipeline = trial_pipeline(tmp_path)
    status, out, _err = run_test(capsys, str(pipeline), "-", stdin="session opened\r\nnothing\n")
    assert status == 0
    assert "line 1: session opened\n  rule failed: no match" in out
    assert "  rule session: matched 'session opened'" in out
    assert "line 2: nothing" in out


def test_a_log_file_gives_hits_exclusions_skips_time_and_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--file counts each rule's matches, exclusions and quick skips, and shows N samples."""
    pipeline = trial_pipeline(tmp_path)
    log = tmp_path / "auth.log"
    lines = [f"Failed password for u{n} from 192.0.2.{n} port 22 ssh2" for n in range(5)]
    lines += ["Failed password for trusted x from 192.0.2.1 port 22 ssh2", "Failed key", "x"]
    log.write_text("\n".join(lines) + "\n")
    status, out, _err = run_test(capsys, str(pipeline), "--file", str(log), "--samples", "2")
    assert status == 0
    assert f"{log}: 8 lines" in out and "input auth's rules: 7 matched a rule, 1 none" in out
    assert re.search(
        r"rule failed: 5 matched, 1 excluded, 0 skipped by a quick rule; [\d.]+ s in its "
        r"regexes \([\d.,]+ us a line\)",
        out,
    )
    assert "rule any-failure: 2 matched, 0 excluded, 5 skipped by a quick rule" in out
    assert "rule session: 0 matched, 0 excluded, 5 skipped by a quick rule" in out
    assert f"    {log}:1: {lines[0]}\n    {log}:2: {lines[1]}\n  rule any-failure" in out
    assert f"    {log}:6: {lines[5]}\n    {log}:7: Failed key\n" in out


def tail_events(pipeline: Pipeline, log: Path, **options: Any) -> list[Event]:
    """Every event a real tail makes of ``log`` with the pipeline's rules, read once."""
    rules = [Rule(r.name, r.regex, r.handler, r.exclude, r.quick) for r in pipeline.rules]
    tail = FileTailGenerator([str(log)], rules, start_at="beginning", once=True, **options)
    tail.track_outcomes = False
    events = []
    while not tail.finished:
        events += tail.get_events()
    tail.stop()
    return events


def test_check_line_agrees_with_the_tail(tmp_path: Path) -> None:
    """The rules check_line says match a line are those the tail makes events for."""
    pipeline = load_pipeline(trial_pipeline(tmp_path))
    lines = [
        "Failed password for a from 192.0.2.1 port 22 ssh2",
        "Failed password for trusted a from 192.0.2.1 port 22 ssh2",
        "Failed key; session opened",
        "session closed",
        "nothing",
    ]
    log = tmp_path / "auth.log"
    log.write_text("\n".join(lines) + "\n")
    events = tail_events(pipeline, log)
    from_tail = [(e.data["line_number"], e.data["rule"]) for e in events]
    from_trial = [
        (number, verdict.rule.name)
        for number, line in enumerate(lines, 1)
        for verdict in check_line(pipeline.rules, line, past_quick=False)
        if verdict.status == MATCHED
    ]
    assert from_trial == from_tail
    verdicts = check_line(pipeline.rules, lines[0], past_quick=False)
    assert [v.status for v in verdicts] == [MATCHED, SKIPPED, SKIPPED]
    assert check_line(pipeline.rules, "nothing")[0].status == NO_MATCH


def test_eventmp_test_as_a_command(tmp_path: Path) -> None:
    """`python -m eventmp test` works as a process, with the exit status of a match."""
    pipeline = trial_pipeline(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "eventmp", "test", str(pipeline), "session closed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "rule session: matched 'session closed'" in result.stdout


def test_a_long_line_is_tried_in_the_pieces_the_tail_cuts(tmp_path: Path) -> None:
    """A line over max_line_bytes is matched in the same pieces as the tail's events carry."""
    pipeline = load_pipeline(
        pipeline_file(
            tmp_path,
            """
            [[inputs]]
            paths = ["long.log"]
            max_line_bytes = 16

            [[rules]]
            regex = '.'
            handler = "print"
            """,
        )
    )
    (spec,) = pipeline.inputs
    line = "é" * 20 + "x" * 9  # 49 bytes of UTF-8: a cut falls inside a character
    log = tmp_path / "long.log"
    log.write_text(line + "\n")
    events = tail_events(pipeline, log, max_line_bytes=16)
    assert pieces(line.encode(), spec) == [e.data["line"] for e in events]
    assert len(events) == 4


def test_a_long_sample_line_says_which_piece(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sample line longer than max_line_bytes is reported piece by piece."""
    pipeline = trial_pipeline(tmp_path)
    pipeline.write_text(
        pipeline.read_text().replace('paths = ["auth.log"]', 'paths = ["a"]\nmax_line_bytes = 20')
    )
    status, out, _err = run_test(capsys, str(pipeline), "session opened " + "y" * 30)
    assert status == 0
    assert "line 1 (piece 1 of 3): session opened yyyyy\n" in out
    assert "line 1 (piece 3 of 3): yyyyy\n" in out


def test_templates_show_what_the_handler_would_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mail subject shows an encoded word made harmless; an argv shows a refused option."""
    pipeline = trial_pipeline(tmp_path)
    text = pipeline.read_text().replace('argv = ["touch", ', 'argv = ["touch", "{user}", ')
    pipeline.write_text(text)
    user = "=?utf-8?q?root=0D=0AReply-To:_a@evil.example?="
    line = f"Failed password for {user} from 192.0.2.1 port 22 ssh2"
    status, out, _err = run_test(capsys, str(pipeline), line)
    assert status == 0
    assert "subject = 'failed: = ?utf-8?q?root=0D=0AReply-To:_a@evil.example?='" in out
    line = "Failed password for --output=/tmp/x from 192.0.2.1 port 22 ssh2"
    status, out, _err = run_test(capsys, str(pipeline), line)
    assert "handler[3] command: argv: ValueError: argv[1] '{user}' would be the option" in out
    assert not (tmp_path / "COMMAND_RAN").exists()
