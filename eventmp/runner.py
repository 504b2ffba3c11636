"""``eventmp run`` from start to end: signals in every phase, the reload, and what it reports.

Parent-side, main thread (the reload has a thread of its own). The command's exit status is
decided in :mod:`eventmp.cli` from the :class:`RunResult` this module returns, so the table of
statuses stays in one place.

The command handles SIGINT, SIGTERM and SIGHUP itself, from before it loads the pipeline file
to its exit, rather than through ``EventDispatcher.serve_forever()``: it has phases the
dispatcher does not know of (loading, starting, reloading), and a signal in each must end the
command cleanly, without a traceback and without a worker left behind.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .dispatcher import EventDispatcher
from .errors import WorkerStartError
from .handlers import ChainEventHandler, EventHandler
from .inputs import InputSet, StateFiles, make_tails
from .pipeline import Pipeline, PipelineError, load_pipeline
from .reporting import FailureSummary, StatusReporter, write_final
from .tail import STDIN

__all__ = ["Interrupted", "Reloader", "RunResult", "Signals", "build", "run"]

logger = logging.getLogger("eventmp")

# Net new containers before the collector looks at the youngest generation (CPython: 700).
_GC_YOUNG_THRESHOLD = 10_000

# How long a reload waits for the events already read to get their outcomes before it gives
# up and lets the running pipeline go on (a handler that hangs, with no event_timeout).
RELOAD_TIMEOUT = 60.0


class Interrupted(BaseException):
    """A signal ends the command before it runs: while it loads (nothing runs yet), or a
    second one while its workers start (their start cleans up after itself).

    A BaseException, so that no ``except Exception`` on the way (an import of the user's
    handler module, say) turns it into a pipeline error.
    """

    def __init__(self, signum: int, phase: str) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.phase = phase


class Signals:
    """The command's handlers for SIGINT, SIGTERM and SIGHUP, one per phase of the run.

    - ``loading``: no child process exists yet; the signal raises :class:`Interrupted`.
    - ``starting``: workers are starting; the signal is noted, and the command stops as soon
      as the start returns, before it reads a line; a second one raises :class:`Interrupted`,
      which the start cleans up after (a slow or hung worker start is not waited for).
    - ``running``: the first SIGINT or SIGTERM (or SIGHUP in ``--once``) stops the dispatcher
      with a drain, a second one at once; SIGHUP in follow mode calls ``on_hangup`` (a reload).
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.phase = "loading"
        self.received: list[int] = []
        self.dispatcher: EventDispatcher | None = None
        self.on_hangup: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.HANDLED}

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        phase = self.phase
        if phase == "loading":
            raise Interrupted(signum, phase)
        if signum == signal.SIGHUP and self.on_hangup is not None and not self.received:
            self.on_hangup()
            return
        self.received.append(signum)
        name = signal.Signals(signum).name
        if phase == "starting":
            if len(self.received) == 1:
                logger.warning(
                    "%s received while starting: stopping once the workers are up; "
                    "send it again to stop at once",
                    name,
                )
                return
            if len(self.received) == 2:  # once: a third must not cut the start's clean-up
                raise Interrupted(self.received[0], phase)
            return
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        drain = len(self.received) == 1
        if drain:
            logger.warning("%s received: draining; send it again to stop at once", name)
        else:
            logger.warning("%s received again: stopping at once", name)
        # stop() waits for the end: never in a signal handler, which may have interrupted the
        # very thread that holds the dispatcher's lock.
        threading.Thread(
            target=dispatcher.stop, kwargs={"drain": drain}, name="eventmp-stop", daemon=True
        ).start()


class Reloader:
    """Reloads the pipeline file on request (SIGHUP), in a thread of its own.

    The new file is checked as ``eventmp check`` would; if it is bad, the running pipeline goes
    on and the error (file and key) is logged. Its inputs and rules replace the running ones
    (see :meth:`InputSet.replace`); its ``[error_handler]`` too. Settings of the dispatcher
    (workers, timeouts, the routing key...) belong to the running worker pool: a change there
    is logged as needing a restart and the old value stays.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        inputs: InputSet,
        failures: FailureSummary,
        state_files: StateFiles,
        *,
        timeout: float = RELOAD_TIMEOUT,
    ) -> None:
        self.started_with = pipeline  # what the dispatcher was built from
        self.current = pipeline
        self.inputs = inputs
        self.failures = failures
        self.state_files = state_files
        self.timeout = timeout
        self._wanted = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="eventmp-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a reload (safe in a signal handler: it only sets a flag)."""
        self._wanted.set()

    def close(self) -> None:
        """After the dispatcher stopped: a reload under way gives up (the input set is stopped)
        at its next step. One stuck loading the file (a module import that hangs) is a daemon
        thread, not waited for long."""
        self._closed = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._closed:
                return
            self._wanted.clear()
            try:
                self.reload()
            except Exception:
                logger.exception("reload of %s failed; the running pipeline goes on", self.path)

    @property
    def path(self) -> str:
        return self.current.path

    def reload(self) -> bool:
        """Load the file again and swap it in; true if the new pipeline runs now."""
        logger.warning("SIGHUP received: reloading %s", self.path)
        try:
            new = load_pipeline(self.path)
        except PipelineError as exc:
            logger.error("reload refused, the running pipeline goes on: %s", exc)
            return False
        if any(spec.paths == [STDIN] for spec in (*self.current.inputs, *new.inputs)):
            # A new tail could not take over the old one's partial line, nor its place in the
            # pipe: what it had read and not yet cut into lines would be lost.
            logger.error(
                "reload refused, the running pipeline goes on: %s: an input reads standard "
                "input, which a reload cannot hand over (restart instead)",
                self.path,
            )
            return False
        for key, old, wanted in restart_settings(self.started_with, new):
            logger.warning(
                "%s: dispatcher.%s changed (%s -> %s): needs a restart; it stays %s until then",
                self.path,
                key,
                old,
                wanted,
                old,
            )
        running = self.current
        kept = keep_handlers(running, new)
        if kept:
            logger.info("rules with the same handlers keep them (and their state): %s", kept)

        def make(pipeline: Pipeline) -> Callable[[], list[Any]]:
            return lambda: make_tails(pipeline, once=False, state_files=self.state_files)

        if not self.inputs.replace(make(new), restore=make(running), timeout=self.timeout):
            if not self._closed:
                logger.error(
                    "reload of %s abandoned: events still without an outcome after %.0f s; "
                    "the running pipeline goes on",
                    self.path,
                    self.timeout,
                )
            return False
        self.failures.then = new.error_handler
        self.inputs.counts.declare(
            (rule.name for rule in new.rules), (spec.name for spec in new.inputs)
        )
        self.current = new
        logger.warning(
            "reloaded %s: %d inputs, %d rules", self.path, len(new.inputs), len(new.rules)
        )
        return True


def restart_settings(running: Pipeline, new: Pipeline) -> list[tuple[str, str, str]]:
    """``(key, running value, new value)`` for each ``[dispatcher]`` setting that differs.

    Each belongs to the dispatcher and its worker pool, which live as long as the command.
    """
    changed = []
    old_settings = {**running.dispatcher_options, "key": running.key_template}
    new_settings = {**new.dispatcher_options, "key": new.key_template}
    for key in dict.fromkeys([*old_settings, *new_settings]):
        old, wanted = old_settings.get(key), new_settings.get(key)
        if old != wanted:
            changed.append((key, _shown(old), _shown(wanted)))
    return changed


def keep_handlers(running: Pipeline, new: Pipeline) -> str:
    """Give each rule of ``new`` the handler of the running rule of that name, when the two
    are built alike; the names of those rules.

    The workers keep one instance of each handler, by identity: a rule that keeps its handler
    object keeps its ``count`` and ``throttle`` windows across a reload, and a reload that adds
    a rule does not restart every other rule's counting.
    """
    old = {rule.name: rule.handler for rule in running.rules}
    kept = []
    for rule in new.rules:
        if rule.name in old and same_handler(old[rule.name], rule.handler):
            rule.handler = old[rule.name]
            kept.append(rule.name)
    return ", ".join(kept)


def same_handler(a: Any, b: Any) -> bool:
    """Whether two handlers built in this process have the same type and settings.

    Handlers are compared by every attribute (private ones too: a mail password lives in one),
    so an attribute that compares by identity makes them differ: a fresh handler, never a
    wrong one. The parent's handler objects never run, so they hold no state of their own.
    """
    if isinstance(a, ChainEventHandler) and isinstance(b, ChainEventHandler):
        return len(a.handlers) == len(b.handlers) and all(
            same_handler(x, y) for x, y in zip(a.handlers, b.handlers, strict=True)
        )
    if type(a) is not type(b) or not isinstance(a, EventHandler):
        return False
    try:
        return bool(vars(a) == vars(b))
    except Exception:
        return False


def _shown(value: Any) -> str:
    return "the default" if value is None else repr(value)


def settle_garbage_collector() -> None:
    """Tune the collector of the command's own process for a run that makes events by the
    hundred thousand: see docs/design.md, "The command's process".

    What start-up made (modules, the pipeline) is frozen out of every later collection, and a
    collection of the youngest objects waits for _GC_YOUNG_THRESHOLD of them, not 700: the
    containers of an event (its dict, its groups) live until its outcome, and each collection
    before that would walk them again.
    """
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *older)


def build(
    pipeline: Pipeline, *, once: bool, state_files: StateFiles | None = None
) -> tuple[EventDispatcher, InputSet]:
    """The dispatcher and inputs that a pipeline describes (not started; inputs held)."""
    options = dict(pipeline.dispatcher_options)
    dispatcher = EventDispatcher(
        key=pipeline.key_function(int(options.get("workers", 1))), **options
    )
    files = state_files if state_files is not None else StateFiles(private=False)
    inputs = InputSet(make_tails(pipeline, once=once, state_files=files))
    inputs.on_ready = dispatcher.poll_now
    inputs.counts.declare(
        (rule.name for rule in pipeline.rules), (spec.name for spec in pipeline.inputs)
    )
    dispatcher.add_event_generator(inputs)
    return dispatcher, inputs


@dataclass
class RunResult:
    """How a run went; :mod:`eventmp.cli` turns it into the exit status."""

    signal: int | None = None  # the first signal that stopped it
    early: bool = False  # the signal came while loading or starting: nothing was read
    start_error: WorkerStartError | None = None
    broken: bool = False  # the dispatcher stopped on its own (dispatcher.failure)
    failed: int = 0  # events that failed
    read_everything: bool = True  # --once: every input read to its end
    without_files: list[str] = field(default_factory=list)
    report: Callable[[int], None] = lambda status: None  # the summary, given the exit status


def run(pipeline: Pipeline, args: Any, signals: Signals, stream: TextIO = sys.stderr) -> RunResult:
    """Run ``pipeline`` until its end (``--once``), a signal, or a failure."""
    signals.phase = "starting"
    state_files = StateFiles(private=not args.once)
    try:
        return _run(pipeline, args, signals, state_files, stream)
    finally:
        state_files.close()


def _run(
    pipeline: Pipeline, args: Any, signals: Signals, state_files: StateFiles, stream: TextIO
) -> RunResult:
    dispatcher, inputs = build(pipeline, once=args.once, state_files=state_files)
    settle_garbage_collector()
    failures = FailureSummary(pipeline.error_handler)
    dispatcher.error_handler(failures)
    signals.dispatcher = dispatcher
    started = time.monotonic()
    if signals.received:  # while it built them: no worker to start
        dispatcher.stop()
        return RunResult(signal=signals.received[0], early=True)
    logger.info("starting %s", pipeline.path)
    try:
        dispatcher.start()
    except WorkerStartError as exc:
        dispatcher.stop()
        return RunResult(start_error=exc)
    signals.phase = "running"
    if signals.received:  # during the start: stop before reading anything
        dispatcher.stop()
        return RunResult(signal=signals.received[0], early=True)
    reloader = None
    if not args.once:
        reloader = Reloader(pipeline, inputs, failures, state_files)
        reloader.start()
        signals.on_hangup = reloader.request
    quiet = args.quiet
    reporter = StatusReporter(
        dispatcher,
        inputs,
        stream=stream,
        interactive=stream.isatty() and quiet == 0,
        interval=args.stats_interval if quiet == 0 else 0.0,
        progress=args.once,
        format=args.stats_format,
        started=started,
    )
    reporter.start()
    inputs.release()
    # In follow mode too: an input reading standard input ends with it, and a pipeline whose
    # every input has ended stops once what it read is handled.
    threading.Thread(
        target=_stop_when_done, args=(dispatcher,), name="eventmp-done", daemon=True
    ).start()
    try:
        while dispatcher.is_alive():
            dispatcher.join(0.25)
    finally:
        signals.on_hangup = None
        reporter.stop()
        if reloader is not None:
            reloader.close()
    received = signals.received[0] if signals.received else None
    stats = dispatcher.stats()
    result = RunResult(
        signal=received,
        broken=dispatcher.failure is not None,
        failed=stats.failed,
        read_everything=inputs.read_everything,
        without_files=inputs.without_files() if args.once else [],
    )
    seconds = time.monotonic() - started
    interrupted = None
    if args.once and not result.read_everything and received is not None:
        interrupted = signal.Signals(received).name

    if quiet < 2:
        result.report = functools.partial(
            write_final,
            stream,
            stats_format=args.stats_format,
            stats=stats,
            inputs=inputs,
            failures=failures,
            seconds=seconds,
            interrupted=interrupted,
        )
    return result


def _stop_when_done(dispatcher: EventDispatcher) -> None:
    """Stop (with a drain) as soon as every input has ended and what it read is handled.

    In --once mode every input ends; in follow mode only one that reads standard input does.
    """
    while dispatcher.is_alive():
        if dispatcher.wait(0.2):
            dispatcher.stop()
            return
