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
}
SECTION_TITLES = [
    "Throughput",
    "Latency",
    "CPU cost of the idle spin",
    "Scaling with workers",
    "Restart after a crash",
    "Memory",
    "CPU cost per event: garbage collection in the worker",
]


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
