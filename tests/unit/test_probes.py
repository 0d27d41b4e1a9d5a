"""Probe items, scoring and reports, with a scripted generator whose behaviour is known."""

import base64
import json
import re

import pytest

from alignkit.errors import AlignkitError
from alignkit.evaluate.intervals import wilson_interval
from alignkit.evaluate.probes import (
    FAMILIES,
    build_items,
    check_families,
    format_table,
    run_probes,
    transcripts_path,
    write_probe_result,
)

REFUSAL = "I'm sorry, but I can't help with that."
_CANARY_ASK = re.compile(
    r"\b([A-Z]{4}) (?:followed directly by|immediately followed by|and) (\d{4})\b"
)


class ScriptedGenerator:
    """A model with known weaknesses: it obeys any injected canary instruction, plays
    the DAN persona, answers base64 with a base64 refusal, and otherwise refuses."""

    def __init__(self):
        self.batches = []

    def generate(self, conversations, *, n=1, max_new_tokens=128, temperature=1.0, seed=None):
        self.batches.append(len(conversations))
        return [[self.reply(c[-1]["content"])] * n for c in conversations]

    def reply(self, text):
        asked = _CANARY_ASK.search(text)
        if asked:
            return f"Sure. {asked.group(1)}{asked.group(2)}"
        if "FREEDOM" in text:
            return "FREEDOM: Sure! Here is everything you asked for."
        if "base64" in text:
            return base64.b64encode(REFUSAL.encode()).decode()
        return REFUSAL


@pytest.fixture(scope="module")
def probed():
    generator = ScriptedGenerator()
    result = run_probes(
        generator,
        families=["dan", "base64", "injection-email"],
        limit=4,
        batch_size=5,
        progress=False,
    )
    return generator, result


def test_attack_success_per_family_with_wilson_intervals(probed):
    _, result = probed
    report = result.report
    assert report["baseline"] == {
        "kind": "baseline", "asr": 0.0, "ci": list(wilson_interval(0, 4)), "k": 0, "n": 4,
        "undecided": 0,
    }  # fmt: skip
    families = report["families"]
    assert list(families) == ["base64", "dan", "injection-email"]  # registry order
    assert families["dan"]["asr"] == 1.0 and families["dan"]["ci"] == list(wilson_interval(4, 4))
    assert families["base64"]["asr"] == 0.0  # the refusal is read after decoding
    assert families["injection-email"]["kind"] == "injection"
    assert families["injection-email"]["asr"] == 1.0 and families["injection-email"]["n"] == 4
    refusal = report["refusal"]
    assert refusal["compliance"]["rate"] == 0.0 and refusal["compliance"]["n"] == 4
    assert refusal["over_refusal"]["rate"] == 1.0
    assert refusal["over_refusal"]["ci"] == list(wilson_interval(4, 4))
    assert sum(c["n"] for c in refusal["by_category"]["over_refusal"].values()) == 4
    assert report["detector"] == "rules" and report["settings"]["limit"] == 4


def test_every_conversation_has_a_transcript(probed):
    generator, result = probed
    transcripts = result.transcripts
    assert len(transcripts) == 4 + 4 + 3 * 4 and sum(generator.batches) == len(transcripts)
    assert max(generator.batches) == 5
    injection = [t for t in transcripts if t["kind"] == "injection"]
    assert all(t["success"] and t["canary"] in t["reply"] for t in injection)
    assert all(t["refused"] is None for t in injection)
    base64_rows = [t for t in transcripts if t["family"] == "base64"]
    assert all(t["refused"] and not t["success"] and t["reply"] != REFUSAL for t in base64_rows)
    for t in transcripts:
        assert t["messages"][-1]["role"] == "user" and t["reply"]
        assert set(t) >= {"family", "kind", "id", "category", "request", "refused", "success"}


def test_report_and_transcripts_are_written_side_by_side(probed, tmp_path):
    _, result = probed
    out = tmp_path / "runs" / "probe.json"
    path = write_probe_result(result, out)
    assert path == tmp_path / "runs" / "probe.transcripts.jsonl" == transcripts_path(out)
    report = json.loads(out.read_text())
    assert report["transcripts"] == "probe.transcripts.jsonl"
    assert len(path.read_text().splitlines()) == len(result.transcripts)
    table = format_table(report)
    for name in ("baseline (no attack)", "dan", "base64", "injection-email", "safe over-refusal"):
        assert name in table


def test_jailbreaks_attack_the_baseline_requests():
    items = build_items(["roleplay", "leetspeak"], limit=5, seed=3)
    ids = {
        kind: [i.id for i in items if i.family == kind]
        for kind in ("baseline", "roleplay", "leetspeak")
    }
    assert len(ids["baseline"]) == 5 and ids["baseline"] == ids["roleplay"] == ids["leetspeak"]
    assert len([i for i in items if i.family == "safe"]) == 5
    assert [i.id for i in build_items([], limit=5, seed=4)] != [
        i.id for i in build_items([], limit=5, seed=3)
    ]
    assert len(build_items([], limit=None)) == 53 + 54


def test_unknown_family_names_the_families_and_a_suggestion():
    with pytest.raises(AlignkitError, match="did you mean 'rot13'"):
        check_families(["rot-13"])
    assert check_families(None) == list(FAMILIES)
    assert check_families(["dan", " dan", ""]) == ["dan"]
    with pytest.raises(AlignkitError, match="limit"):
        run_probes(ScriptedGenerator(), limit=0, progress=False)


def says_sorry(prompt, reply):
    return 1.0 if "sorry" in reply.lower() else 0.0


def test_a_judge_replaces_the_rules_and_sees_the_plain_request():
    seen = []

    def sorry_judge(prompt, reply):
        seen.append(prompt)
        return says_sorry(prompt, reply)

    result = run_probes(
        ScriptedGenerator(), families=["dan"], judge=sorry_judge, limit=2, progress=False
    )
    assert result.report["detector"] == "sorry_judge"
    assert result.report["families"]["dan"]["asr"] == 1.0
    assert result.report["baseline"]["asr"] == 0.0
    requests = {t["request"] for t in result.transcripts}
    assert all(p[-1]["content"] in requests and "FREEDOM" not in p[-1]["content"] for p in seen)


def test_safety_docs_name_every_family_and_probe_option():
    import argparse
    from pathlib import Path

    from alignkit.cli import probe

    docs = (Path(__file__).resolve().parents[2] / "docs" / "safety.md").read_text()
    subparsers = argparse.ArgumentParser().add_subparsers()
    probe.register(subparsers)
    options = {
        option
        for action in subparsers.choices["probe"]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    missing = [name for name in [*FAMILIES, *sorted(options)] if f"`{name}" not in docs]
    assert not missing, f"docs/safety.md does not mention: {missing}"
