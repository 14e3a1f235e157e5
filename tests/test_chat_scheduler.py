"""The worker's chat scheduler (continuous batching across jobs) on a tiny random Llama."""

from __future__ import annotations

import time

import pytest

from handlers.chat import ChatRequest, TextChatModel
from inferq.protocol import Priority
from tests.tiny.chat import tiny_llama_chat_dir
from workers.chat import ChatScheduler


@pytest.fixture(scope="module")
def llama() -> TextChatModel:
    return TextChatModel(str(tiny_llama_chat_dir()), "cpu", name="tiny-llama")


def _request(content: str, tokens: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": content}], max_new_tokens=tokens)


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_bulk_requests_leave_a_row_for_interactive_ones(llama):
    scheduler = ChatScheduler(llama, name="tiny", max_batch_size=3)
    try:
        finished: list[str] = []
        bulk = []
        for i in range(4):
            future = scheduler.submit(_request(f"bulk {i}", 200), priority=Priority.BULK)
            future.add_done_callback(lambda _, name=f"bulk{i}": finished.append(name))
            bulk.append(future)
        _wait_until(lambda: scheduler.stats.max_rows >= 2 and scheduler.stats.steps >= 4)
        assert scheduler.stats.max_rows == 2  # the third row stays free
        interactive = scheduler.submit(_request("now", 3), priority=Priority.INTERACTIVE)
        interactive.add_done_callback(lambda _: finished.append("interactive"))
        assert interactive.result(timeout=60).completion_tokens == 3
        for future in bulk:
            assert future.result(timeout=120).completion_tokens == 200
        # it joined the running batch at once instead of waiting for a bulk row to end
        assert finished[0] == "interactive"
        assert scheduler.stats.max_rows == 3
    finally:
        scheduler.stop()


def test_without_bulk_work_every_row_is_used(llama):
    scheduler = ChatScheduler(llama, name="tiny", max_batch_size=3)
    try:
        futures = [
            scheduler.submit(_request(f"job {i}", 20), priority=Priority.JOB) for i in range(3)
        ]
        assert [f.result(timeout=60).completion_tokens for f in futures] == [20, 20, 20]
        assert scheduler.stats.max_rows == 3
    finally:
        scheduler.stop()
