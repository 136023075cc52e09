"""The service runner's scheduling of helper threads: everything but the event loop is batch."""

from __future__ import annotations

import os
import threading

import pytest

from services.kit.app import keep_helper_threads_from_preempting_the_loop

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux-only")


def test_helper_threads_become_batch_and_the_loop_thread_does_not() -> None:
    started, finish = threading.Event(), threading.Event()
    helper_ids: list[int] = []

    def helper() -> None:
        helper_ids.append(threading.get_native_id())
        started.set()
        finish.wait(5)

    thread = threading.Thread(target=helper)
    thread.start()
    try:
        started.wait(5)
        keep_helper_threads_from_preempting_the_loop()
        assert os.sched_getscheduler(helper_ids[0]) == os.SCHED_BATCH
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        finish.set()
        thread.join()
