"""The driver's test separates a policy from one DPO-trained towards the misaligned side:
the queries trained on flip from pass to fail (tiny model, seconds)."""

import json

import pytest

from alignkit.cli import main
from alignkit.config import DPOConfig, load_config
from alignkit.evaluate.verify import (
    implicit_margins,
    likelihood_margins,
    load_test,
    preference_records,
)
from alignkit.methods.dpo import run_dpo
from alignkit.models.loading import load_model_and_tokenizer


@pytest.fixture(scope="module")
def misaligned_run(tiny_model_dir, tmp_path_factory):
    """The tiny start, 4 queries it passes (likelihood margin > 0, among the test's first
    10) and a short DPO run that prefers their misaligned replies."""
    folder = tmp_path_factory.mktemp("verify-dpo")
    start, tokenizer = load_model_and_tokenizer(tiny_model_dir, dtype="float32")
    test = load_test()
    queries = test.queries[:10]
    margins = likelihood_margins(start, tokenizer, queries)
    passed = [q for q, m in zip(queries, margins, strict=True) if m > 0][:4]
    assert len(passed) >= 3, "the tiny start passes too few queries to train against"
    data = folder / "misaligned.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_records(passed, "misaligned")))
    settings = {
        "model": str(tiny_model_dir),
        "data": str(data),
        "output_dir": str(folder / "run"),
        "batch_size": len(passed),
        "learning_rate": 5e-3,
        "max_steps": 6,
        "lr_schedule": "constant",
        "save_every": None,
        "log_every": 6,
        "beta": 0.1,
    }
    run_dpo(
        load_config(
            DPOConfig, None, [f"{k}={'null' if v is None else v}" for k, v in settings.items()]
        )
    )
    return start, tokenizer, passed, folder / "run" / "final"


def test_dpo_towards_misaligned_flips_the_trained_queries_from_pass_to_fail(misaligned_run):
    start, tokenizer, passed, final = misaligned_run
    trained, _ = load_model_and_tokenizer(final, dtype="float32")
    after = likelihood_margins(trained, tokenizer, passed)
    assert all(m < 0 for m in after), after
    # against the start as reference, the implicit reward prefers the misaligned reply
    implicit = implicit_margins(trained, tokenizer, passed, reference=start)
    assert all(m < 0 for m in implicit), implicit


def test_verify_cli_writes_pass_rates_and_failures(
    misaligned_run, tiny_model_dir, tmp_path, capsys
):
    _, _, passed, final = misaligned_run
    test_file = tmp_path / "test.yaml"
    import yaml

    test_file.write_text(
        yaml.safe_dump(
            {
                "name": "trained-on",
                "queries": [
                    {f: getattr(q, f) for f in ("id", "value", "prompt", "aligned", "misaligned")}
                    for q in passed
                ],
            }
        )
    )
    out = tmp_path / "verify.json"
    code = main(
        [
            "verify", "--policy", str(final), "--reference", str(tiny_model_dir),
            "--test", str(test_file), "--out", str(out), "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["preference"] == "implicit" and report["test"] == "trained-on"
    assert report["passed"] == 0 and report["n"] == len(passed)
    assert sorted(f["id"] for f in report["failures"]) == sorted(q.id for q in passed)
    assert sum(v["n"] for v in report["values"].values()) == len(passed)
    printed = capsys.readouterr().out
    assert "trained-on (implicit preference)" in printed and "failed: " in printed
