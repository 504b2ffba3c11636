"""The report of scripts/bench.py: docs/performance.md and its charts, from a results JSON."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH_PATH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """scripts/bench.py, imported as a module (it only runs under ``__main__``)."""
    spec = importlib.util.spec_from_file_location("eventmp_bench_script", BENCH_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def throughput_run(rate: float) -> dict[str, Any]:
    return {"events": 2_000, "seconds": 2_000 / rate, "events_per_s": rate}


def log_run(seconds: float, lines: int = 2_000_000, size: int = 272_000_000) -> dict[str, Any]:
    return {
        "lines": lines,
        "bytes": size,
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "mb_per_s": size / 1e6 / seconds,
        "matches": 120_000,
    }


def latency_run(median: float, p99: float, steal: float, busy: bool) -> dict[str, Any]:
    run = {"samples": 150, "median_us": median, "p99_us": p99, "max_us": p99 * 2}
    run["steal_pct"] = steal
    if busy:
        run |= {"offered_per_s": 3_000, "sent": 300, "achieved_per_s": 2_990.0}
    return run


# key, group, label, start method; the runs of each row are in RUNS
ROWS: list[tuple[str, str, str, str]] = [
    ("tp.submit.fork", "throughput", "eventmp `submit()`", "fork"),
    ("tp.generator.fork", "throughput", "eventmp generator-fed (1,000/poll)", "fork"),
    ("tp.ceiling.fork", "throughput", "batched-Pipe ceiling (256 Events/message)", "fork"),
    ("tp.submit.forkserver", "throughput", "eventmp `submit()`", "forkserver"),
    ("tp.ceiling.forkserver", "throughput", "batched-Pipe ceiling", "forkserver"),
    ("tp.mp_queue", "throughput", "`multiprocessing.Queue`, put + ack per event", "fork"),
    ("tp.ppe_map", "throughput", "`ProcessPoolExecutor.map(chunksize=1024)`", "fork"),
    ("tp.loky_map", "throughput", "loky `map(chunksize=1024)`", "loky"),
    ("lat.idle.eventmp", "latency", "eventmp, idle (`submit()` → handler)", "forkserver"),
    ("lat.idle.pipe", "latency", "raw Pipe one-way, idle", "forkserver"),
    ("lat.busy.eventmp", "latency", "eventmp, busy producer", "forkserver"),
    ("lat.busy.pipe", "latency", "raw Pipe, `send_bytes` per event", "forkserver"),
    ("spin.1000.default", "spin", "1,000 events/s, idle_spin=200 µs", "forkserver"),
    ("spin.1000.off", "spin", "1,000 events/s, idle_spin=0", "forkserver"),
    ("cpu.1", "cpu", "workers=1", "forkserver"),
    ("cpu.2", "cpu", "workers=2", "forkserver"),
    ("restart.fork", "restart", "crash → next event's handler", "fork"),
    ("rss.default", "rss", "max_pending=10,000", "forkserver"),
    ("gc.freeze", "gc", "`gc.freeze()` as the worker starts", "fork"),
    ("log.grep", "logs", "`grep -cE`", ""),
    ("log.grep_bytes", "logs", "`grep -cE` with `LC_ALL=C` (reference)", ""),
    ("log.naive", "logs", "naive Python loop, `json.dumps` per match", ""),
    ("log.once", "logs", "eventmp `run --once`, default settings", "forkserver"),
    ("log.once_workers2", "logs", "eventmp `run --once`, `workers = 2`", "forkserver"),
    (
        "log.follow",
        "logs",
        "eventmp `run` (follow mode) catching up a 1,074 MB backlog",
        "forkserver",
    ),
]
RUNS: dict[str, list[dict[str, Any]]] = {
    "tp.submit.fork": [throughput_run(600_000), throughput_run(700_000)],
    "tp.generator.fork": [throughput_run(800_000), throughput_run(900_000)],
    "tp.ceiling.fork": [throughput_run(500_000), throughput_run(550_000)],
    "tp.submit.forkserver": [throughput_run(650_000), throughput_run(750_000)],
    "tp.ceiling.forkserver": [{"error": "BenchError: broken pipe"}],
    "tp.mp_queue": [throughput_run(28_000), throughput_run(30_000)],
    "tp.ppe_map": [throughput_run(300_000), throughput_run(320_000)],
    "tp.loky_map": [throughput_run(240_000), throughput_run(250_000)],
    "lat.idle.eventmp": [latency_run(87, 271, 0.5, False), latency_run(90, 300, 1.5, False)],
    "lat.idle.pipe": [latency_run(66, 198, 0.4, False), latency_run(70, 210, 1.2, False)],
    "lat.busy.eventmp": [latency_run(36, 1_900, 0.3, True), latency_run(40, 4_300, 2.6, True)],
    "lat.busy.pipe": [latency_run(31, 2_300, 1.2, True), latency_run(33, 6_100, 3.1, True)],
    "spin.1000.default": [{"worker_cpu_pct": 12.0, "worker_cpu_us_per_event": 120.0}] * 2,
    "spin.1000.off": [{"worker_cpu_pct": 11.0, "worker_cpu_us_per_event": 110.0}] * 2,
    "cpu.1": [{"events_per_s": 160.0, "busiest_worker_events": 80}] * 2,
    "cpu.2": [{"events_per_s": 310.0, "busiest_worker_events": 42}] * 2,
    "restart.fork": [{"median_ms": 18.0, "min_ms": 13.0, "max_ms": 20.0}] * 2,
    "rss.default": [
        {
            "events_per_s": 100_000.0,
            "max_pending": 10_000,
            "baseline_mb": 24.0,
            "peak_mb": 27.0,
            "growth_mb": 3.0,
            "peak_pending": 10_000,
        }
    ]
    * 2,
    "gc.freeze": [{"events_per_s": 500_000.0, "worker_cpu_us_per_event": 1.4}] * 2,
    "log.grep": [log_run(1.0)] * 2,
    "log.grep_bytes": [log_run(0.2)] * 2,
    "log.naive": [log_run(1.5)] * 2,
    "log.once": [log_run(2.5, size=272_000_000) | {"peak_rss_mb": 60.0}] * 2,
    "log.once_workers2": [{"error": "BenchError: eventmp run --once wrote 5 events, 6 match"}],
    "log.follow": [log_run(8.0, 7_920_000, 1_074_000_000) | {"peak_rss_mb": 300.0}] * 2,
}
SECTION_TITLES = [
    "Throughput",
    "Latency",
    "CPU cost of the idle spin",
    "Scaling with workers",
    "Restart after a crash",
    "Memory",
    "CPU cost per event: garbage collection in the worker",
    "Reading logs",
]
LOGS_META = {
    "grep_locale": "C.UTF-8",
    "pattern": "Failed password for (invalid user )?([^ ]+) from ([^ ]+) port ([0-9]+) ssh2",
    "log": {"lines": 2_000_000, "bytes": 272_000_000, "matches": 120_000, "seed": 1, "kinds": {}},
    "follow": {"lines": 7_920_000, "bytes": 1_074_000_000, "matches": 475_000, "seed": 2},
}


@pytest.fixture
def results_path(bench: ModuleType, tmp_path: Path) -> Path:
    """A small hand-made run, written to JSON the way the script writes its results."""
    cases = [
        bench.Case(key, group, label, method, bench.not_measured, results=RUNS[key])
        for key, group, label, method in ROWS
    ]
    meta = {
        "argv": ["scripts/bench.py", "--runs", "2"],
        "quick": False,
        "runs": 2,
        "python": "3.11.7",
        "python_implementation": "CPython",
        "cpu_count": 2,
        "eventmp_version": "9.9.9",
        "commit": "abc1234-dirty",
        "machine": {
            "cpu_model": "Test CPU 3000",
            "cpu_count": 2,
            "cpus_usable": 2,
            "virtual_machine": True,
            "system": "Linux",
            "kernel": "6.1.0-test",
            "distribution": "Debian GNU/Linux 12 (bookworm)",
            "architecture": "x86_64",
        },
        "started_utc": "2026-11-29 22:40 UTC",
        "command": ".venv/bin/python scripts/bench.py --runs 2 --write-docs",
        "seconds": 420.0,
        "default_start_method": "forkserver",
        "generator_poll_interval": 0.0,
        "cpu_handler_iterations": 120_000,
        "holding_bytes_per_event": 180.0,
        "holding_all_mb": 0.3,
        "idle_spin_default": 0.0002,
        "notes": ["pebble is not installed: skipped (pip install -e '.[bench]')."],
        "logs": LOGS_META,
    }
    report = bench.Report(cases, bench.QUICK_SIZES, meta)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(report.json(), ensure_ascii=False))
    return path


def test_page_is_stamped(bench: ModuleType, results_path: Path) -> None:
    """The page says it is generated and names the commit, Python, machine, date and command."""
    page = bench.performance_page(bench.load_report(results_path))
    assert page.startswith("# Performance\n")
    assert "Generated by scripts/bench.py; do not edit by hand" in page.splitlines()[2]
    for expected in (
        "`abc1234-dirty`",
        "eventmp 9.9.9",
        "3.11.7 (CPython)",
        "Test CPU 3000, 2 CPUs, virtual machine",
        "Linux 6.1.0-test (Debian GNU/Linux 12 (bookworm)), x86_64",
        "2026-11-29 22:40 UTC",
        "`.venv/bin/python scripts/bench.py --runs 2 --write-docs` (2 runs, 7 min)",
    ):
        assert expected in page


def test_page_has_every_section(bench: ModuleType, results_path: Path) -> None:
    """Every section has its heading, its explanatory text, its table; the goals have verdicts."""
    page = bench.performance_page(bench.load_report(results_path))
    headings = re.findall(r"^## (.+)$", page, flags=re.MULTILINE)
    assert headings == ["Goals", *SECTION_TITLES, "Notes"]
    for section in bench.SECTIONS.values():
        first_words = " ".join(bench.inspect.cleandoc(section.about).split()[:4])
        assert first_words in " ".join(page.split()), section.title
    assert "{" not in page  # every placeholder of the texts was filled
    assert "| eventmp `submit()` | fork | 2,000 | 650,000 (600,000-700,000) |" in page
    assert "| batched-Pipe ceiling | forkserver | n/a | failed |" in page
    assert "- **PASS** submit() (fork) / PPE.map(1024): 2.10x (goal >= 2x)" in page
    assert "**FAIL** busy producer" in page
    assert "measurement failed: batched-Pipe ceiling (forkserver), run 1" in page
    assert "pebble is not installed" in page


def test_page_shows_ratios_and_charts(bench: ModuleType, results_path: Path) -> None:
    """The page has eventmp's ratios to each peer and to the raw Pipe, and embeds both charts."""
    page = bench.performance_page(bench.load_report(results_path))
    assert "| eventmp / peer | eventmp `submit()` (fork) |" in page
    assert "| `ProcessPoolExecutor.map(chunksize=1024)` (fork) | 2.10x | 2.74x | 2.26x |" in page
    assert "| batched-Pipe ceiling (same start method) | 1.24x | 1.62x | n/a |" in page
    assert "- eventmp, idle (`submit()` → handler): median 1.30x, p99 1.40x" in page
    assert "](performance-throughput.svg)" in page
    assert "](performance-latency.svg)" in page


def test_throughput_chart_has_one_bar_per_row(bench: ModuleType, results_path: Path) -> None:
    """The throughput SVG parses and has one bar per throughput row that has a figure."""
    root = ET.fromstring(bench.throughput_svg(bench.load_report(results_path)))
    assert root.tag == f"{SVG}svg"
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]
    measured = [key for key, group, *_ in ROWS if group == "throughput"]
    measured.remove("tp.ceiling.forkserver")  # failed: no bar
    assert sorted(bar.get("data-row") for bar in bars) == sorted(measured)
    widths = {bar.get("data-row"): float(bar.get("width", 0)) for bar in bars}
    assert widths["tp.generator.fork"] > widths["tp.ppe_map"] > widths["tp.mp_queue"] > 0
    assert root.find(f"{SVG}title") is not None


def test_latency_chart_has_median_and_p99_per_row(bench: ModuleType, results_path: Path) -> None:
    """The latency SVG parses and has a median bar and a p99 bar per latency row."""
    root = ET.fromstring(bench.latency_svg(bench.load_report(results_path)))
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]
    rows = [key for key, group, *_ in ROWS if group == "latency"]
    for figure in ("median", "p99"):
        shown = [bar.get("data-row") for bar in bars if bar.get("data-figure") == figure]
        assert sorted(shown) == sorted(rows)
    texts = " ".join(text.text or "" for text in root.iter(f"{SVG}text"))
    assert "Idle: one event every 2 ms" in texts and "p99 3.10 ms" in texts


def test_report_from_writes_the_docs(bench: ModuleType, results_path: Path, tmp_path: Path) -> None:
    """``--report-from FILE --write-docs`` writes the page and both charts without measuring."""
    docs = tmp_path / "docs"
    arguments = ["--report-from", str(results_path), "--write-docs", "--docs-dir", str(docs)]
    assert bench.main(arguments) == 0
    assert sorted(p.name for p in docs.iterdir()) == [
        "performance-latency.svg",
        "performance-throughput.svg",
        "performance.md",
    ]
    page = (docs / "performance.md").read_text(encoding="utf-8")
    assert "Page rendered from the saved results by" in page and "--report-from" in page
    for name in ("performance-latency.svg", "performance-throughput.svg"):
        ET.parse(docs / name)


def test_report_survives_a_second_round_trip(bench: ModuleType, results_path: Path) -> None:
    """A report loaded from JSON writes JSON that loads to the same page."""
    report = bench.load_report(results_path)
    again = results_path.with_name("again.json")
    again.write_text(json.dumps(report.json(), ensure_ascii=False))
    page = bench.performance_page(bench.load_report(again))
    assert page == bench.performance_page(report)


def test_run_stamp_describes_this_machine(bench: ModuleType) -> None:
    """The stamp taken before a run has the commit, the CPU model and core count, the command."""
    stamp = bench.run_stamp(["--quick", "--write-docs"])
    assert re.fullmatch(r"[0-9a-f]{4,}(-dirty)?|unknown \(not a git checkout\)", stamp["commit"])
    assert stamp["machine"]["cpu_model"] and stamp["machine"]["cpu_count"] >= 1
    assert stamp["command"].endswith("scripts/bench.py --quick --write-docs")


def test_links_within_the_page_resolve(bench: ModuleType, results_path: Path) -> None:
    """Every ``](#fragment)`` link of the page names one of its headings, as GitHub spells it."""
    page = bench.performance_page(bench.load_report(results_path))
    slugs = {
        re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", page, flags=re.MULTILINE)
    }
    fragments = re.findall(r"\]\(#([^)]+)\)", page)
    assert fragments and set(fragments) <= slugs


def test_logs_section(bench: ModuleType, results_path: Path) -> None:
    """The log rows: a table with lines/s, MB/s and peak RSS, eventmp's ratios, their goals."""
    page = bench.performance_page(bench.load_report(results_path))
    section = page.split("## Reading logs", 1)[1].split("\n## ", 1)[0]
    assert "a generated sshd-style `auth.log` of 200,000 lines (272 MB," in " ".join(
        section.split()
    )
    assert "`Failed password for (invalid user )?([^ ]+) from ([^ ]+) port ([0-9]+) ssh2`" in (
        " ".join(section.split())
    )
    assert "| `grep -cE` | 2,000,000 | 272 | 1.00 | 2,000,000 | 272.0 | n/a |" in section
    assert "It runs with `LC_ALL=C.UTF-8`, so that it reads" in " ".join(section.split())
    assert "| eventmp `run --once`, default settings | 2,000,000 | 272 | 2.50 | 800,000 | " in (
        section
    )
    assert "| 108.8 | 60 |" in section
    assert "| eventmp `run --once`, `workers = 2` | 2,000,000 | 272 | failed | failed |" in section
    assert "| 7,920,000 | 1,074 | 8.00 | 990,000 | 134.2 | 300 |" in section
    assert "- eventmp `run --once`, default settings: 2.50x grep -cE, 1.67x naive loop" in section
    assert "(reference): " not in section  # only eventmp's rows are divided
    goals = page.split("## Goals", 1)[1].split("\n## ", 1)[0]
    for line in (
        "- **FAIL** eventmp run --once (default settings) / grep -cE, time per byte: 2.50x "
        "(108.8 vs 272.0 MB/s) (goal <= 2x)",
        "- **PASS** eventmp run --once (default settings) / naive loop, time per byte: 1.67x",
        "- **FAIL** follow-mode catch-up / grep -cE, time per byte: 2.03x",
        "- **PASS** follow-mode catch-up / naive loop, time per byte: 1.35x",
        "- **FAIL** follow-mode catch-up, peak RSS of the eventmp process: 300 MB for a "
        "1,074 MB backlog (goal < 256 MB)",
    ):
        assert line in goals
    assert "measurement failed: eventmp `run --once`, `workers = 2` (forkserver), run 1" in page
    assert "measurement failed: `grep -cE` ()" not in page


def log_report(bench: ModuleType, once: list[dict[str, Any]]) -> Any:
    """A report of the log group only, with ``once`` as the runs of the default eventmp row."""
    cases = [
        bench.Case("log.grep", "logs", "`grep -cE`", "", bench.not_measured, [log_run(1.0)]),
        bench.Case("log.naive", "logs", "naive loop", "", bench.not_measured, [log_run(2.0)]),
        bench.Case("log.once", "logs", "eventmp", "forkserver", bench.not_measured, once),
    ]
    return bench.Report(cases, bench.QUICK_SIZES, {"logs": LOGS_META})


def test_a_row_stopped_at_its_time_limit_fails_its_goal(bench: ModuleType) -> None:
    """A row that ran out of time has no figure, but a time limit far beyond 2x grep's time is
    a FAIL, with the lower bound; a limit that proves nothing leaves the goal open."""
    stopped = {"error": "TooSlow: ...", "timed_out_after_s": 300.0, "lines": 2_000_000}
    once = "eventmp run --once (default settings) / grep -cE, time per byte: "
    report = log_report(bench, [stopped | {"bytes": 272_000_000}])
    goals = {goal["check"]: goal["passed"] for goal in report.goals()}
    assert goals[once + "did not finish within 300 s, so more than 300.0x (goal <= 2x)"] is False
    follow = "follow-mode catch-up / grep -cE, time per byte: "
    assert goals[follow + "no such row (see the notes) (goal <= 2x)"] is None
    report = log_report(bench, [stopped | {"timed_out_after_s": 1.5, "bytes": 272_000_000}])
    goals = {goal["check"]: goal["passed"] for goal in report.goals()}
    assert goals[once + "did not finish within 1.5 s (goal <= 2x)"] is None


def test_a_partial_run_checks_only_its_own_goals(bench: ModuleType) -> None:
    """With --only logs the report has no throughput table, ratios or goals of other groups."""
    report = log_report(bench, [log_run(3.0)])
    text = report.text()
    assert "Throughput ratios" not in text and "idle latency" not in text
    assert "- FAIL eventmp run --once (default settings) / grep -cE, time per byte: 3.00x" in text
    assert "- N/A follow-mode catch-up, peak RSS of the eventmp process: no figure" in text
    page = bench.performance_page(report)
    assert re.findall(r"^## (.+)$", page, flags=re.MULTILINE) == ["Goals", "Reading logs"]


def test_only_and_the_log_options(bench: ModuleType, tmp_path: Path) -> None:
    """--only takes group names; the --log-* options set the sizes; a partial page needs a
    --docs-dir of its own."""
    args = bench.parse_args(["--quick", "--only", "logs,throughput", "--follow-backlog", "64MB"])
    assert args.only == ("throughput", "logs")
    sizes = bench.sizes_from(args)
    assert sizes.follow_backlog_bytes == 64 << 20
    assert sizes.log_lines == bench.QUICK_SIZES.log_lines
    args = bench.parse_args(["--log-lines", "5000", "--log-time-limit", "2m"])
    assert (bench.sizes_from(args).log_lines, bench.sizes_from(args).log_time_limit_s) == (
        5000,
        120.0,
    )
    assert args.only == ()
    for bad in (
        ["--only", "logs,bogus"],
        ["--only", "logs", "--write-docs"],
        ["--report-from", "x.json", "--only", "logs"],
        ["--follow-backlog", "lots"],
        ["--log-time-limit", "0"],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    args = bench.parse_args(["--only", "logs", "--write-docs", "--docs-dir", str(tmp_path)])
    assert args.docs_dir == tmp_path


def test_generated_log_is_deterministic_and_counted(bench: ModuleType, tmp_path: Path) -> None:
    """The same seed gives the same bytes; the counts the rows check against are right."""
    first = bench.generate_log(tmp_path / "a.log", lines=3_000)
    second = bench.generate_log(tmp_path / "b.log", lines=3_000)
    data = (tmp_path / "a.log").read_bytes()
    assert data == (tmp_path / "b.log").read_bytes()
    assert (first.lines, first.bytes, first.kinds) == (second.lines, second.bytes, second.kinds)
    lines = data.decode().splitlines()
    assert len(lines) == first.lines == sum(first.kinds.values()) and len(data) == first.bytes
    assert 120 <= first.bytes / first.lines <= 160
    rule = re.compile(bench.LOG_PATTERN)
    assert sum(1 for line in lines if rule.search(line)) == first.matches
    assert 0.04 < first.matches / first.lines < 0.08
    extra = [re.compile(regex) for _, regex, _ in bench.LOG_EXTRA_RULES]
    ten = sum(1 for line in lines for rx in [rule, *extra] if rx.search(line))
    assert ten == first.expected(10) > first.matches
    backlog = bench.generate_log(tmp_path / "c.log", min_bytes=200_000, seed=7)
    assert 200_000 <= backlog.bytes == (tmp_path / "c.log").stat().st_size


def test_log_pipeline_is_a_valid_pipeline_file(bench: ModuleType, tmp_path: Path) -> None:
    """The pipeline file of the eventmp rows loads, with the rules and settings the rows say."""
    from eventmp.pipeline import load_pipeline

    log_file = bench.generate_log(tmp_path / "auth.log", lines=100)
    path = tmp_path / "p.toml"
    path.write_text(bench.log_pipeline(log_file, tmp_path / "out.jsonl", 2, 10))
    pipeline = load_pipeline(path)
    assert [rule.name for rule in pipeline.rules][:2] == ["failed-password", "max-auth-tries"]
    assert len(pipeline.rules) == 10 and pipeline.rules[0].regex.pattern == bench.LOG_PATTERN
    assert pipeline.dispatcher_options["workers"] == 2
    assert pipeline.inputs[0].start_at == "beginning"
    path.write_text(bench.log_pipeline(log_file, tmp_path / "out.jsonl", None, 1))
    assert len(load_pipeline(path).rules) == 1


def test_log_rows_check_their_counts(bench: ModuleType, tmp_path: Path) -> None:
    """Each log row runs and verifies its count of matches; a count that is off fails loudly."""
    log_file = bench.log_fixture(tmp_path, lines=2_000)
    assert bench.log_fixture(tmp_path, lines=2_000) == log_file  # reused, not written again
    assert bench.log_grep(log_file, 30, None)["matches"] == log_file.matches
    assert bench.log_grep(log_file, 30, "C")["locale"] == "C"
    assert bench.log_naive(log_file, tmp_path, 30)["matches"] == log_file.matches
    once = bench.log_eventmp(log_file, tmp_path, 30)
    assert once["matches"] == log_file.matches and once["peak_rss_mb"] > 0
    follow = bench.log_eventmp(log_file, tmp_path, 30, follow=True)
    assert follow["matches"] == log_file.matches
    wrong = bench.replace(log_file, kinds={**log_file.kinds, "failed_password": 1})
    with pytest.raises(bench.BenchError, match="grep -cE counted"):
        bench.log_grep(wrong, 30, None)
    with pytest.raises(bench.BenchError, match=r"wrote \d+ events"):
        bench.log_eventmp(wrong, tmp_path, 30)
