"""eventmp.stats: the summary paragraph and the JSON stats object of `eventmp run`."""

from __future__ import annotations

from pathlib import Path

from test_cli import append, eventmp_command, pipeline_file
from test_reporting import TWO_RULES, stats_objects

from eventmp.stats import STATS_SCHEMA


def test_summary_counts_each_rule_and_gives_rates(tmp_path: Path) -> None:
    """The human summary says, per rule, matches, processed and failed, and lines/s and MB/s."""
    pipeline = pipeline_file(tmp_path, TWO_RULES)
    append(tmp_path / "app.log", "ERROR 1", "ERROR -2", "fine", "ERROR 3")
    result = eventmp_command("run", "--once", str(pipeline))
    assert result.returncode == 1, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert "read 4 lines" in summary and "lines/s" in summary and "MB/s" in summary
    assert "Rules error: 3 matched, 2 processed, 1 failed; never: 0 matched" in summary


def test_json_final_object_follows_the_documented_schema(tmp_path: Path) -> None:
    """--stats-format json ends with one final object: totals, per rule, per input, status."""
    pipeline = pipeline_file(tmp_path, TWO_RULES)
    append(tmp_path / "app.log", "ERROR 1", "ERROR -2", "fine", "ERROR 3")
    result = eventmp_command("run", "--once", "--stats-format", "json", str(pipeline))
    assert result.returncode == 1, result.stderr
    (final,) = stats_objects(result.stderr)
    assert final["schema"] == STATS_SCHEMA and final["type"] == "final"
    assert set(final) == {
        "schema",
        "type",
        "time",
        "elapsed_s",
        "lines",
        "bytes",
        "bytes_total",
        "events",
        "rates",
        "workers",
        "handlers",
        "rules",
        "inputs",
        "status",
        "interrupted_by",
        "failures",
        "inputs_without_files",
    }
    assert final["status"] == 1 and final["interrupted_by"] is None
    assert final["lines"] == 4 and final["bytes"] == len("ERROR 1\nERROR -2\nfine\nERROR 3\n")
    assert final["events"] == {
        "accepted": 3,
        "pending": 0,
        "processed": 2,
        "failed": 1,
        "abandoned": 0,
    }
    assert final["rules"] == {
        "error": {"matches": 3, "processed": 2, "failed": 1, "slow_lines": 0},
        "never": {"matches": 0, "processed": 0, "failed": 0, "slow_lines": 0},
    }
    assert final["inputs"]["app"] == {
        "lines": 4,
        "bytes": final["bytes"],
        "matches": 3,
        "processed": 2,
        "failed": 1,
    }
    assert final["inputs"]["other"]["lines"] == 0
    assert set(final["rates"]) == {"lines_per_s", "bytes_per_s", "events_per_s"}
    assert final["handlers"] == {}  # no handler here counts anything
    assert [f["error"] for f in final["failures"]] == ["AssertionError"]
    assert "eventmp: read" not in result.stderr  # no human summary besides


EVICTING = """
[[inputs]]
name = "auth"
paths = ["auth.log"]
start_at = "beginning"

[[rules]]
name = "fail"
regex = 'FAIL (?P<ip>\\S+)'
handlers = [
  { type = "count", count = 2, window = "10m", key = "{ip}", max_keys = 3 },
  { type = "print", format = "again {ip}" },
]
"""


def test_keys_evicted_by_count_are_in_the_summary_and_the_json(tmp_path: Path) -> None:
    """A count handler over its max_keys: the keys it evicted in the worker reach the stats."""
    pipeline = pipeline_file(tmp_path, EVICTING)
    append(tmp_path / "auth.log", *(f"FAIL 192.0.2.{n}" for n in range(10)))
    human = eventmp_command("run", "--once", str(pipeline))
    assert human.returncode == 0, human.stderr
    assert "count/throttle evicted 7 least recently seen keys" in human.stderr
    machine = eventmp_command("run", "--once", "--stats-format", "json", str(pipeline))
    (final,) = stats_objects(machine.stderr)
    assert final["handlers"] == {"evicted_keys": 7}
