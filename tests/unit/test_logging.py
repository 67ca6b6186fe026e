"""A second ``configure_logging`` (another app in the process) changes the lines of every logger: those cached
on their first use under the first configuration, and the standard library's, once each."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from app.observability.logging import configure_logging


@pytest.fixture(autouse=True)
def _development_logging() -> Iterator[None]:
    yield
    configure_logging(level="INFO", as_json=False)  # what the next app of the session configures anyway


def test_loggers_cached_under_one_configuration_follow_the_next(capsys: pytest.CaptureFixture[str]) -> None:
    module_level = structlog.get_logger("tests.cached")
    configure_logging(level="INFO", as_json=False)
    module_level.info("first", n=1)
    bound = structlog.get_logger("tests.bound").bind(kind="bound")  # as RequestContext binds its logger
    first = capsys.readouterr().err.splitlines()

    configure_logging(level="INFO", as_json=True)
    module_level.info("second", n=2)
    bound.info("third")
    second = capsys.readouterr().err.splitlines()

    assert len(first) == 1
    assert "first" in first[0]
    assert "[tests.cached]" in first[0]
    assert "n=1" in first[0]
    lines = [json.loads(line) for line in second]
    assert [(line["event"], line["logger"], line["level"]) for line in lines] == [
        ("second", "tests.cached", "info"),
        ("third", "tests.bound", "info"),
    ]
    assert lines[0]["n"] == 2
    assert lines[1]["kind"] == "bound"


def test_standard_library_lines_are_written_once_in_the_latest_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(level="INFO", as_json=False)
    configure_logging(level="INFO", as_json=True)
    logging.getLogger("tests.library").warning("from a library")

    (line,) = capsys.readouterr().err.splitlines()
    logged = json.loads(line)
    assert logged["event"] == "from a library"
    assert (logged["logger"], logged["level"]) == ("tests.library", "warning")


def test_an_exception_is_rendered_in_each_format(capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("tests.errors")
    for as_json in (False, True):
        configure_logging(level="INFO", as_json=as_json)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    *console, structured = capsys.readouterr().err.splitlines()

    assert "Traceback (most recent call last):" in console
    assert "ValueError: boom" in console
    assert "ValueError: boom" in json.loads(structured)["exception"]
