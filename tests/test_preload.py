"""eventmp.preload: the forkserver that forks workers with eventmp already imported."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventmp.preload import WORKER_MODULE, pipeline_argument, preload_workers

pytestmark = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here"
)

# A handler, run in the worker, that writes the command line of the process it was forked
# from (under forkserver, the server: its preload list is on its command line).
PARENT_WRITER = (
    "import json, os, psutil; "
    "open('parents.jsonl', 'a').write(json.dumps(psutil.Process(os.getppid()).cmdline()) + '\\n')"
)


@pytest.fixture
def preload_list() -> Iterator[None]:
    """Restore this process's forkserver preload list after the test."""
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    saved = list(server._preload_modules)
    yield
    server._preload_modules = saved


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "p.toml"], "p.toml"),
        (["run", "--once", "-q", "p.toml"], "p.toml"),
        (["run", "--stats-interval", "5s", "p.toml", "--once"], "p.toml"),
        (["run", "--stats-format", "json", "p.toml"], "p.toml"),
        (["run", "--", "-odd.toml"], "-odd.toml"),
        (["check", "p.toml"], None),
        (["test", "p.toml", "a line"], None),
        (["run"], None),
        (["run", "--once"], None),
        ([], None),
    ],
)
def test_pipeline_argument_finds_the_file_of_a_run_command_only(
    argv: list[str], expected: str | None
) -> None:
    """pipeline_argument names the pipeline of `eventmp run`, past its options, else None."""
    assert pipeline_argument(argv) == expected


def test_preload_workers_adds_the_worker_module_to_what_is_there(preload_list: None) -> None:
    """The worker module joins the preload list once; the modules already listed stay."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "json"])
    preload_workers(context)
    preload_workers(context)
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    assert server._preload_modules == ["__main__", "json", WORKER_MODULE]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_preload_workers_leaves_other_start_methods_alone(method: str, preload_list: None) -> None:
    """Under spawn or fork the forkserver's preload list is not touched."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    before = list(server._preload_modules)
    preload_workers(multiprocessing.get_context(method))
    assert server._preload_modules == before


@pytest.mark.parametrize(
    ("argv", "body"),
    [
        (["check", "{path}"], "[dispatcher]\n"),
        (["run", "{path}"], '[dispatcher]\nstart_method = "spawn"\n'),
        (["run", "{path}"], "this is not TOML ["),
        (["run", "{path}"], "dispatcher = 3\n"),
        (["run", "{missing}"], ""),
    ],
    ids=["check", "spawn", "not-toml", "dispatcher-not-a-table", "missing-file"],
)
def test_start_early_starts_nothing_it_cannot_be_sure_of(
    tmp_path: Path, argv: list[str], body: str
) -> None:
    """No early server for another command, another start method or an unreadable file."""
    path = tmp_path / "p.toml"
    path.write_text(body)
    args = [a.format(path=path, missing=tmp_path / "missing.toml") for a in argv]
    code = textwrap.dedent(
        f"""
        import multiprocessing.forkserver as fs
        from eventmp.preload import start_early
        print(start_early({args!r}), fs._forkserver._forkserver_pid is not None)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_start_early_starts_the_server_with_the_worker_module(tmp_path: Path) -> None:
    """For a forkserver pipeline the server runs at once, with eventmp's worker preloaded."""
    path = tmp_path / "p.toml"
    path.write_text("[dispatcher]\nworkers = 2\n")  # forkserver by default
    code = textwrap.dedent(
        f"""
        import multiprocessing.forkserver as fs, psutil, time
        from eventmp.preload import start_early
        started = start_early(["run", "--once", {str(path)!r}])
        server = psutil.Process(fs._forkserver._forkserver_pid)
        deadline = time.monotonic() + 30
        # Until the server has exec'd (the child of the fork has this process's command).
        while "forkserver" not in " ".join(server.cmdline()) and time.monotonic() < deadline:
            time.sleep(0.01)
        print(started, "{WORKER_MODULE}" in " ".join(server.cmdline()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def _run_once(tmp_path: Path, dispatcher: str) -> list[list[str]]:
    """Run a two-line pipeline with `python -m eventmp run --once`; each worker's parent."""
    (tmp_path / "in.log").write_text("one\ntwo\n")
    (tmp_path / "p.toml").write_text(
        textwrap.dedent(
            f"""
            [dispatcher]
            {dispatcher}

            [[inputs]]
            paths = ["in.log"]
            start_at = "beginning"

            [[rules]]
            name = "any"
            regex = "."
            handler = {{ type = "exec", command = {json.dumps(PARENT_WRITER)} }}
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "eventmp", "run", "--once", "-q", "p.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "parents.jsonl").read_text().splitlines()
    assert len(lines) == 2
    return [json.loads(line) for line in lines]


def test_the_command_forks_its_workers_from_a_server_that_preloaded_eventmp(
    tmp_path: Path,
) -> None:
    """`eventmp run` of a forkserver pipeline: each worker's parent is the preloaded server."""
    for parent in _run_once(tmp_path, ""):
        assert "multiprocessing.forkserver" in " ".join(parent)
        assert WORKER_MODULE in " ".join(parent)


def test_the_command_starts_no_server_for_a_spawn_pipeline(tmp_path: Path) -> None:
    """`eventmp run` of a spawn pipeline: the workers' parent is the command itself."""
    for parent in _run_once(tmp_path, 'start_method = "spawn"'):
        assert "multiprocessing.forkserver" not in " ".join(parent)
        assert parent[1:3] == ["-m", "eventmp"]
