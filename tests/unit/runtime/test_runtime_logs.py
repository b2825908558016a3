from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from hami.runtime.logs import configure_logging, log_context, log_node, log_pod, truncate


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_truncate_marks_cut_payloads():
    assert truncate("short") == "short"
    cut = truncate("x" * 1000, 10)
    assert cut.startswith("x" * 10 + "...") and "(1000 chars)" in cut
    assert truncate(b"\xffbytes") == "\ufffdbytes"


def test_text_format_has_the_object_prefix(restore_root_logging):
    out = io.StringIO()
    configure_logging("debug", json=False, stream=out)
    log = logging.getLogger("hami.test")
    with log_context(pod="ns/p", node="n1"):
        log.info("assumed %s", "gpu-0")
    log.info("no context")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("INFO hami.test [ns/p node=n1] assumed gpu-0")
    assert lines[1].endswith("INFO hami.test no context")
    assert lines[0][:4].isdigit() and "Z " in lines[0]


def test_json_format_carries_severity_and_object(restore_root_logging):
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    log = logging.getLogger("hami.test")
    with log_context(pod="ns/p", uid="u-1"):
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    log.debug("hidden")
    (line,) = out.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["severity"] == "error"
    assert doc["logger"] == "hami.test"
    assert doc["message"] == "failed"
    assert doc["object"] == {"pod": "ns/p", "uid": "u-1"}
    assert "ValueError: bad" in doc["exception"]


def test_configure_logging_is_idempotent(restore_root_logging):
    out = io.StringIO()
    configure_logging("info", stream=out)
    configure_logging("info", stream=out)
    logging.getLogger("hami.test").warning("once")
    assert out.getvalue().count("once") == 1
    with pytest.raises(ValueError):
        configure_logging("loud")


async def test_context_is_per_task_and_restored():
    async def worker(pod: str) -> tuple[str | None, str | None]:
        with log_context(pod=pod):
            await asyncio.sleep(0)
            return log_pod.get(), log_node.get()

    with log_context(node="n1"):
        results = await asyncio.gather(worker("a/1"), worker("b/2"))
    assert results == [("a/1", "n1"), ("b/2", "n1")]
    assert log_pod.get() is None and log_node.get() is None
