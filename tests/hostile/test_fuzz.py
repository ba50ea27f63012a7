"""Property-based fuzzing of the C-STORE handler and the series reader (short CI run).

``bench/fuzz.py`` runs the same properties for minutes with fresh randomness; here the examples
are derandomized, so CI is repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import fuzz
from tests.hostile.corpus import Part10

CI = settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzz.StoreTarget]:
    result = fuzz.StoreTarget(tmp_path_factory.mktemp("fuzz-spool"))
    yield result
    result.close()


@pytest.mark.slow
@CI
@given(part=fuzz.mutated_file, request_uid=st.one_of(st.none(), st.just(""),
                                                     st.text(max_size=70)))
def test_store_handler_answers_an_allowed_status_and_keeps_the_spool_sound(
        target: fuzz.StoreTarget, part: Part10, request_uid: str | None):
    fuzz.check_store(target, part, request_uid)


@pytest.mark.slow
@CI
@given(part=fuzz.mutated_file)
def test_series_reader_raises_only_domain_errors(part: Part10):
    fuzz.check_reader(part)


def test_unmutated_seeds_are_stored_and_decoded(tmp_path: Path):
    """The properties are not vacuous: every seed is accepted and fully decoded."""
    target = fuzz.StoreTarget(tmp_path)
    try:
        for seed in fuzz.seeds():
            assert fuzz.check_store(target, seed) == 0x0000
            assert fuzz.check_reader(seed) == ["decoded"]
    finally:
        target.close()
