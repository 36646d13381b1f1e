"""Every input of the coverage-guided fuzzer's corpus (tests/fuzz/corpus/<target>/: seeds and
what atheris found reached new code) replayed through its target: each is a regression case,
run in the suite on the build under test (compiled, unlike under atheris)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fuzz_targets import TARGETS, describe

pytestmark = pytest.mark.fuzz

CORPUS = Path(__file__).parent / "corpus"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_corpus_replays_cleanly(target: str) -> None:
    inputs = sorted((CORPUS / target).iterdir())
    assert len(inputs) >= 10, f"the {target} corpus is missing"
    assert len(inputs) <= 400, f"the {target} corpus grew past its cap: merge it smaller"
    for path in inputs:
        data = path.read_bytes()
        try:
            TARGETS[target](data)
        except Exception as exc:
            raise AssertionError(f"{path.name}: {describe(data)}") from exc
