"""Where the original method's outputs are: $LPT_REFERENCE_RUN (the Makefile and CI point it at
../shared/fixtures/reference-run). They are another project's text and stay outside this
repository, so a bare clone skips the tests that read them, saying in one line how to run them."""

import os
from pathlib import Path

import pytest

REFERENCE_RUN_ENV = "LPT_REFERENCE_RUN"
HOW = (
    f"set {REFERENCE_RUN_ENV} to a folder holding the reference run's stage1_mcq_raw_responses.jsonl, "
    "stage1_mcqs_parsed.jsonl and stage2_simple_cot_samples.jsonl to run this test"
)


def reference_run() -> Path | None:
    """The folder, or None when it is not given or lacks the files."""
    location = os.environ.get(REFERENCE_RUN_ENV)
    if not location or not (Path(location) / "stage2_simple_cot_samples.jsonl").is_file():
        return None
    return Path(location)


def reference_file(name: str) -> Path:
    """A file of the reference run; the calling test is skipped when there is none."""
    folder = reference_run()
    if folder is None:
        given = os.environ.get(REFERENCE_RUN_ENV)
        pytest.skip(f"{REFERENCE_RUN_ENV}={given} has no reference run: {HOW}" if given else HOW)
    return folder / name
