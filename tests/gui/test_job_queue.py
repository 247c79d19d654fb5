"""The job queue: jobs run off the UI thread, in order, report progress and cancel; compute jobs
run in a child process whose crash, kill or native hang fails the job, not the window."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from child_jobs import (
    Echo,
    FailsWithOption,
    FailsWithOptionInChild,
    KilledBySystem,
    NativeSleep,
    Segfault,
)

from app.core.jobs import Reporter, check_cancel
from app.gui.jobs_panel import JobsPanel
from app.gui.worker import JobQueue


@dataclass(frozen=True)
class Blocking:
    """Runs until released or cancelled, recording which thread ran it."""

    name: str
    release: threading.Event = field(default_factory=threading.Event, compare=False)
    ran_on: list[str] = field(default_factory=list, compare=False)
    progress_unit: str = "items"

    @property
    def title(self) -> str:
        return f"blocking {self.name}"

    def run(self, reporter: Reporter) -> str:
        self.ran_on.append(threading.current_thread().name)
        step = 0
        while not self.release.wait(0.01):
            check_cancel(reporter)
            step += 1
            reporter.progress(min(step, 99), 100, f"step {step}")
        reporter.log("info", "released")
        return self.name


def test_jobs_run_in_order_off_the_ui_thread(qtbot) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue()
    try:
        first, second = Blocking("first"), Blocking("second")
        id1, id2 = queue.submit(first), queue.submit(second)
        qtbot.waitUntil(lambda: queue.jobs[id1].state == "running", timeout=5000)
        # The UI thread keeps processing events while the job runs.
        qtbot.waitUntil(lambda: queue.jobs[id1].done > 5, timeout=5000)
        assert queue.jobs[id2].state == "queued"
        first.release.set()
        qtbot.waitUntil(lambda: queue.jobs[id2].state == "running", timeout=5000)
        assert queue.jobs[id1].state == "done" and queue.jobs[id1].result.value == "first"
        assert any(text == "released" for _, _, text in queue.jobs[id1].log)
        second.release.set()
        qtbot.waitUntil(lambda: queue.jobs[id2].finished, timeout=5000)
        assert first.ran_on[0] != threading.current_thread().name
    finally:
        queue.shutdown()


def test_cancel_running_and_queued_jobs(qtbot) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue()
    panel = JobsPanel(queue)
    qtbot.addWidget(panel)
    try:
        running, queued = Blocking("running"), Blocking("queued")
        id1, id2 = queue.submit(running), queue.submit(queued)
        qtbot.waitUntil(lambda: queue.jobs[id1].state == "running", timeout=5000)
        queue.cancel(id2)
        panel.tree.setCurrentItem(panel._items[id1])
        assert panel.cancel_button.isEnabled()
        panel.cancel_button.click()
        qtbot.waitUntil(lambda: queue.jobs[id1].finished and queue.jobs[id2].finished,
                        timeout=5000)
        assert queue.jobs[id1].state == "cancelled"
        assert queue.jobs[id2].state == "cancelled" and queued.ran_on == []
        assert panel._items[id1].text(4).startswith("cancelled")
        panel.clear_finished()
        assert panel.tree.topLevelItemCount() == 0 and queue.jobs == {}
    finally:
        queue.shutdown()


def _queue_with_short_grace() -> JobQueue:
    queue = JobQueue()
    queue.compute_worker.ask_grace_s = 0.3
    queue.compute_worker.term_grace_s = 0.3
    return queue


def test_crashed_and_killed_compute_jobs_fail_and_the_next_job_runs(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    queue = _queue_with_short_grace()
    try:
        pieces: list[str] = []
        ids = [queue.submit(Segfault()), queue.submit(KilledBySystem(tmp_path / "out.gguf")),
               queue.submit(Echo(("x", "y"), on_text=pieces.append))]
        qtbot.waitUntil(lambda: all(queue.jobs[i].finished for i in ids), timeout=60000)
        crashed, killed, echo = (queue.jobs[i] for i in ids)
        assert crashed.state == "failed" and "SIGSEGV" in crashed.text
        assert any("Fatal Python error" in text for _, _, text in crashed.log)
        assert killed.state == "failed" and "SIGKILL" in killed.text
        assert list(tmp_path.iterdir()) == []
        assert echo.state == "done" and echo.result.value.text == "xy" and pieces == ["x", "y"]
        assert echo.result.value.pid != os.getpid()
    finally:
        queue.shutdown()


def test_cancel_ends_a_compute_job_stuck_in_native_code(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    queue = _queue_with_short_grace()
    try:
        stuck = queue.submit(NativeSleep(tmp_path / "out.gguf", ignore_term=True))
        qtbot.waitUntil(lambda: any(text == "sleeping in C" for _, _, text
                                    in queue.jobs[stuck].log), timeout=30000)
        queue.cancel(stuck)
        qtbot.waitUntil(lambda: queue.jobs[stuck].finished, timeout=30000)
        assert queue.jobs[stuck].state == "cancelled"
        assert "did not stop when asked" in queue.jobs[stuck].text
        assert list(tmp_path.iterdir()) == []
    finally:
        queue.shutdown()


def test_a_quick_job_does_not_wait_behind_a_compute_job(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    queue = _queue_with_short_grace()
    try:
        stuck = queue.submit(NativeSleep(tmp_path / "out.gguf"))
        quick = Blocking("quick")
        quick.release.set()
        quick_id = queue.submit(quick)
        qtbot.waitUntil(lambda: queue.jobs[quick_id].finished, timeout=30000)
        assert queue.jobs[quick_id].state == "done"
        assert not queue.jobs[stuck].finished
        queue.cancel(stuck)
        qtbot.waitUntil(lambda: queue.jobs[stuck].finished, timeout=30000)
    finally:
        queue.shutdown()


def test_a_failed_jobs_option_is_worded_for_the_window(qtbot) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue()
    try:
        ids = [queue.submit(FailsWithOption()), queue.submit(FailsWithOptionInChild())]
        qtbot.waitUntil(lambda: all(queue.jobs[i].finished for i in ids), timeout=30000)
        for job_id in ids:
            record = queue.jobs[job_id]
            assert record.state == "failed"
            assert record.text.endswith("(choose transformers as the Backend in the Test tab)")
            assert "--" not in record.text
            assert record.result.option.name == "backend"
    finally:
        queue.shutdown()
