"""Schemathesis against the live API: every operation, generated cases by the hundred, zero 5xx and zero
responses that contradict the OpenAPI document.

``CONFORMANCE_EXAMPLES`` sets the cases per operation of the fuzzing phase (300 by default, twice that for
the operations of ``LARGER_BUDGET``); the examples, coverage and stateful phases add their own.
``CONFORMANCE_SEED`` replays a run whose seed it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx

from tests.conformance.conftest import Credentials, LiveApi

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("CONFORMANCE_EXAMPLES", "300"))
# Operations with parameters or a body must each have been called with at least this many distinct cases.
# They typically get 200 to 600 over all phases. The others (GET /health, POST /logout, ...) have nothing to
# vary.
MIN_CASES_WITH_INPUT = EXAMPLES // 2
# Operations whose generated inputs repeat by design get twice the budget (repeats are not sent again, see
# schemathesis.toml), which keeps them as far above the floor as the others. GET /orders/user/{user_id} mostly
# takes the user ids schemathesis read from earlier answers (the test account's, those POST /register created:
# that is how it reaches its 200 and 403 answers), so only about a third of its examples are distinct; half of
# POST /token/refresh's are invalid bodies from a small set ({}, {"refresh_token": ""}, ...). With the same
# budget as the others they got 149 to 333 and 184 to 304 cases.
LARGER_BUDGET = ("/orders/user/{user_id}", "/token/refresh")
# CPython before 3.11.8, and 3.12 before 3.12.2, can raise SystemError ("AST constructor recursion depth
# mismatch") when two threads build ASTs at once (python/cpython#106905). Hypothesis parses source files to
# describe strategies while it generates, so with two schemathesis workers the generation of an operation
# sometimes failed; Hypothesis could not replay the failure, schemathesis counts an unreproducible error as a
# pass, and that operation's fuzzing stopped after about a dozen cases: POST /register got 59 to 176 cases in
# about one run in ten. One worker on those versions.
AST_THREAD_SAFE = (3, 11, 8) <= sys.version_info < (3, 12) or sys.version_info >= (3, 12, 2)
WORKERS = 2 if AST_THREAD_SAFE else 1


def test_every_operation_answers_as_documented(
    live_api: LiveApi, live_account: Credentials, tmp_path: Path
) -> None:
    events = tmp_path / "events.ndjson"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + larger_budgets(EXAMPLES * 2))
    seed = ["--seed", os.environ["CONFORMANCE_SEED"]] if os.environ.get("CONFORMANCE_SEED") else []
    run = subprocess.run(
        [
            Path(sys.executable).parent / "schemathesis",
            "--config-file",
            config,
            "run",
            live_api.schema_url,
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            str(WORKERS),
            "--report",
            "ndjson",
            "--report-ndjson-path",
            events,
            "--no-color",
            *seed,
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "CONFORMANCE_EMAIL": live_account.email,
            "CONFORMANCE_PASSWORD": live_account.password,
        },
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    report = run.stdout + run.stderr
    print(report)  # shown by pytest -s, and by `just conformance`

    assert run.returncode == 0, f"{report}\n--- API log ---\n{live_api.log_tail()}"
    cases = cases_per_operation(events)
    print("cases per operation:", json.dumps(dict(sorted(cases.items())), indent=1))
    documented = document_operations(live_api)
    assert set(documented) <= set(cases), f"operations never called: {set(documented) - set(cases)}"
    starved = {
        operation: cases[operation]
        for operation, has_input in documented.items()
        if has_input and cases[operation] < MIN_CASES_WITH_INPUT
    }
    assert not starved, f"fewer than {MIN_CASES_WITH_INPUT} cases: {starved}"


def larger_budgets(examples: int) -> str:
    """Schemathesis ``[[operations]]`` tables giving each path of ``LARGER_BUDGET`` ``examples``."""
    return "".join(
        f'\n[[operations]]\ninclude-path = "{path}"\ngeneration.max-examples = {examples}\n'
        for path in LARGER_BUDGET
    )


def cases_per_operation(events: Path) -> Counter[str]:
    """How many generated requests each ``METHOD /path`` got an answer to, over all phases."""
    counts: Counter[str] = Counter()
    for line in events.read_text().splitlines():
        event = json.loads(line)
        recorder = event.get("ScenarioFinished", {}).get("recorder", {})
        for case_id in recorder.get("interactions", {}):
            case = recorder["cases"][case_id]["value"]
            counts[f"{case['method']} {case['path']}"] += 1
    return counts


def document_operations(live_api: LiveApi) -> dict[str, bool]:
    """``METHOD /path`` of each documented operation, and whether it takes any input."""
    document = httpx.get(live_api.schema_url, timeout=10).json()
    return {
        f"{method.upper()} {path}": bool(operation.get("parameters") or operation.get("requestBody"))
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
