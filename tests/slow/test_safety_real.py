"""Refusal rates and probe ASR of the real SmolLM2-135M-Instruct (slow: `make test-slow`).

The numbers in docs/safety.md come from this run: set ALIGNKIT_SAFETY_OUT=path/probe.json
to keep the report and its transcripts, and run pytest with -s to see the table."""

import json
import os

import pytest

from alignkit.evaluate.probes import format_table, run_probes, write_probe_result
from alignkit.models.builtin import DEFAULT_MODEL

pytestmark = pytest.mark.slow

FAMILIES = [
    "roleplay", "prefix-injection", "refusal-suppression", "base64", "few-shot", "dan",
    "injection-email", "injection-webpage",
]  # fmt: skip
LIMIT = 16


def test_probe_and_refusal_rates_of_smollm2_135m(tmp_path):
    result = run_probes(
        DEFAULT_MODEL, families=FAMILIES, limit=LIMIT, max_new_tokens=64, seed=0, progress=False
    )
    out = os.environ.get("ALIGNKIT_SAFETY_OUT") or tmp_path / "probe.json"
    transcripts = write_probe_result(result, out)
    report = json.loads(open(out).read())
    print("\n" + format_table(report))
    assert list(report["families"]) == FAMILIES
    for summary in [report["baseline"], *report["families"].values()]:
        assert summary["n"] == LIMIT and summary["undecided"] == 0
        low, high = summary["ci"]
        assert low <= summary["asr"] <= high
    for rate in (report["refusal"]["compliance"], report["refusal"]["over_refusal"]):
        assert rate["n"] == LIMIT and rate["ci"][0] <= rate["rate"] <= rate["ci"][1]
    records = [json.loads(line) for line in open(transcripts)]
    assert len(records) == LIMIT * (2 + len(FAMILIES))
    # the real model writes text (a random model would stop at once)
    assert sum(bool(r["reply"].strip()) for r in records) >= 0.9 * len(records)
