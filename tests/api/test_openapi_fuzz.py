"""A bounded schemathesis run against the published OpenAPI: no request gets a 5xx.

Its own vault and server (the fuzzer creates users and sites), on loopback; a
fixed, small number of valid and invalid examples per operation and role, with
Hypothesis derandomised so the run is repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from apikit import World, build_world, pydicom_file
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

ROLES = (("rad-n", 5), ("admin1", 4), ("tech-n", 2))


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("fuzz") / "home", models_dir)
    try:
        w.upload("tech-n", pydicom_file("CT_small.dcm").read_bytes(), "CT_small.dcm")
        yield w
    finally:
        w.server.stop()
        w.vault.close()


def fuzz(world: World, operation, mode, user: str, examples: int, failures: list[str]) -> int:
    """Send ``examples`` generated requests for one operation; record any 5xx."""
    headers = world.auth(user)
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=world.base_url, headers=headers, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{user} {mode.value} {operation.label}: {response.status_code}")

    try:
        run()
    except Unsatisfiable:  # nothing to break in an operation without parameters
        assert mode is GenerationMode.NEGATIVE
    return calls


def modes(operation) -> list[GenerationMode]:
    """Valid requests always; invalid ones where there is a query or a body to break."""
    if operation.query.items or operation.body.items:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def test_no_operation_answers_with_a_server_error(fuzz_world):
    schema = schemathesis.openapi.from_url(f"{fuzz_world.base_url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    failures: list[str] = []
    calls = sum(fuzz(fuzz_world, operation, mode, user, examples, failures)
                for user, examples in ROLES for operation in operations
                for mode in modes(operation))
    assert calls > 100
    assert failures == []
