"""alignkit online-dpo end to end on a tiny model: every selection rule for a round, the
query budget, and the invariants: a run killed (SIGKILL) and resumed with resume=auto
equals the uninterrupted run (weights, ensemble, queries used, label store), never asks
its labeller twice for the same item, and never calls it more than `query_budget` times.

The labeller scores a response by its share of the letter "e" (any deterministic function
of the text will do: these tests check bookkeeping, not learning)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.config import EnsembleSettings, OnlineDPOConfig
from alignkit.methods.online_dpo import run_online_dpo
from alignkit.models.lora import LoraSettings
from tests.conftest import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def e_share(prompt, completion):
    return completion.count("e") / max(len(completion), 1)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("online") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Words {i}:"}) + "\n" for i in range(12)))
    return path


def settings(model, prompts, output_dir, **overrides):
    values = dict(
        model=str(model),
        data=str(prompts),
        reward="tests.integration.test_online_dpo:e_share",
        output_dir=str(output_dir),
        batch_size=3,
        samples_per_prompt=3,
        max_new_tokens=5,
        learning_rate=1e-3,
        max_steps=1,
        save_every=None,
        ensemble=EnsembleSettings(members=3, hidden=8, steps=2),
    )
    values.update(overrides)
    return OnlineDPOConfig(**values)


def store_rows(run_dir):
    """The label store's answered questions: items (key, position, status, result) and
    paid answers (item, request name, answer)."""
    with sqlite3.connect(Path(run_dir) / "labels.sqlite") as db:
        items = db.execute(
            "SELECT key, position, status, result FROM items ORDER BY key"
        ).fetchall()
        answers = db.execute(
            "SELECT item, name, answer FROM requests WHERE failure IS NULL ORDER BY item"
        ).fetchall()
    return items, answers


def test_the_configs_rules_are_the_selection_registry():
    from alignkit.config import SELECTION_RULES
    from alignkit.feedback.selection import SELECTIONS

    assert set(SELECTION_RULES) == set(SELECTIONS)


@pytest.mark.parametrize(
    "rule", ["passive", "random", "best_worst", "sea_ee", "sea_bai", "uncertainty"]
)
def test_each_selection_rule_runs_a_round(tiny_model_dir, prompts_file, tmp_path, rule):
    # sea_bai runs with LoRA: features and reference from the adapter-disabled policy
    lora = LoraSettings(r=4, alpha=8, dropout=0.0) if rule == "sea_bai" else None
    result = run_online_dpo(
        settings(tiny_model_dir, prompts_file, tmp_path / rule, selection=rule, lora=lora)
    )
    (logged,) = read_metrics(tmp_path / rule)
    # a score labeller is called once per response it scores: best_worst all K, others 2
    per_prompt = 3 if rule == "best_worst" else 2
    assert logged["queries/used"] <= 3 * per_prompt
    assert logged["queries/used"] >= 3 * per_prompt - 2 * logged["pairs/ties"] - 3
    items, answers = store_rows(tmp_path / rule)
    assert len(items) == len(answers) == logged["queries/used"]
    assert {"objective/scores", "queries/used"} <= logged.keys()
    if logged["pairs/labelled"]:
        assert {
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "loss",
            "objective/kl",
        } <= logged.keys()
    adapter = "adapter_config.json" if lora else "config.json"
    assert (result.final_dir / adapter).is_file()
    assert (tmp_path / rule / "ensemble.pt").is_file() == (
        rule.startswith("sea") or rule == "uncertainty"
    )


def test_budget_exhaustion_stops_cleanly_with_the_budget_spent(
    tiny_model_dir, prompts_file, tmp_path
):
    """7 calls pay for 3 prompts of 2 responses (6), not a 4th: the run stops after
    round 2 of 5 with 6 queries used, says why, and still writes final/ and the eval."""
    out = tmp_path / "budget"
    result = run_online_dpo(
        settings(
            tiny_model_dir,
            prompts_file,
            out,
            batch_size=2,
            max_steps=5,
            query_budget=7,
            eval_data=str(prompts_file),
            oracle="tests.integration.test_online_dpo:e_share",
        )
    )
    assert result.steps == 2
    assert result.last_metrics["stopped"] == "query budget of 7 spent"
    assert result.last_metrics["queries/used"] <= 7
    logged = read_metrics(out)
    assert [m["queries/used"] for m in logged if "queries/used" in m][-1] <= 7
    assert "eval/objective/scores" in logged[-1] and "eval/objective/kl" in logged[-1]
    items, _ = store_rows(out)
    assert len(items) == result.last_metrics["queries/used"]
    assert (result.final_dir / "config.json").is_file()


def test_pairwise_judge_iterative_reference_and_mixed_labels(
    tiny_model_dir, prompts_file, tmp_path
):
    """A pairwise LLM judge (one call per pair, soft labels), the reference refreshed
    every round (iterative DPO) and mixed preference learning from round 2 on."""
    out = tmp_path / "judge"
    run_online_dpo(
        settings(
            tiny_model_dir,
            prompts_file,
            out,
            reward=None,
            judge=f"llm:{tiny_model_dir}",
            selection="sea_ee",
            max_steps=3,
            ref_update_every=1,
            mixed_fraction=0.5,
            mixed_burn_in=1,
            save_every=2,
        )
    )
    logged = read_metrics(out)
    assert logged[0]["pairs/from_ensemble"] == 0
    assert all(m["pairs/from_ensemble"] == 1 for m in logged[1:])  # half of 3 pairs
    spent = [m["queries/used"] for m in logged]
    assert all(0 < b - a <= 3 for a, b in zip([0, *spent[:-1]], spent, strict=True))
    assert "objective/scores" not in logged[0]  # a judge gives no scores
    # the refreshed reference starts each round equal to the policy: KL of its samples is 0
    assert logged[1]["objective/kl"] == pytest.approx(0.0, abs=1e-4)
    # kept: the reference of round 2 and that of the step-2 checkpoint (round 1's)
    kept = sorted(p.name for p in (out / "reference").iterdir())
    assert kept == ["step-1.safetensors", "step-2.safetensors"]


LOGGING_LABELLER = """
import json, os

def score(prompt, completion):
    with open({log!r}, "a") as out:
        out.write(json.dumps([prompt, completion]) + "\\n")
        out.flush()
        os.fsync(out.fileno())
    return completion.count("e") / max(len(completion), 1)
"""


def test_sigkill_then_resume_equals_the_uninterrupted_run_and_never_pays_twice(
    tiny_model_dir, prompts_file, tmp_path
):
    """Two runs of sea_ee under a budget that ends them, each with a labeller that logs
    every call: one straight, one SIGKILLed after its round-2 checkpoint once it has paid
    for round 3's questions, then resumed with resume=auto. The resumed run reads
    those answers from the label store: across both of its processes no question is asked
    twice and the calls stay within the budget; weights, ensemble, queries used per round
    and the label store equal the straight run's."""

    def command(output_dir, log, *extra):
        labeller = tmp_path / f"labeller_{output_dir.name}.py"
        labeller.write_text(LOGGING_LABELLER.format(log=str(log)))
        return [
            sys.executable, "-m", "alignkit", "-q", "online-dpo",
            f"model={tiny_model_dir}", f"data={prompts_file}", f"output_dir={output_dir}",
            f"reward={labeller}:score", "selection=sea_ee", "batch_size=3",
            "samples_per_prompt=3", "max_new_tokens=5", "learning_rate=1e-3",
            "max_steps=6", "query_budget=28", "save_every=2", "keep_last=5",
            "ensemble.members=3", "ensemble.hidden=8", "ensemble.steps=2", *extra,
        ]  # fmt: skip

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight_log, killed_log = tmp_path / "straight.log", tmp_path / "killed.log"
    done = subprocess.run(
        command(straight, straight_log), capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]

    process = subprocess.Popen(
        command(killed, killed_log), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, cwd=ROOT,
    )  # fmt: skip
    # Killed once round 3 is logged: past the round-2 checkpoint, with round 3's answers
    # paid for and stored, while round 4 samples (not inside a labeller call: a call
    # whose answer was not yet stored is asked again on resume, see query_book).
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and '"step": 3' in metrics.read_text()):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists()
    checkpoint = json.loads((killed / "checkpoints" / "step-2" / "extra.json").read_text())
    paid_before_kill = len(killed_log.read_text().splitlines())
    assert paid_before_kill > checkpoint["queries_used"]  # answers the resume must not re-buy

    done = subprocess.run(
        command(killed, killed_log, "resume=auto"),
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    calls = [tuple(json.loads(line)) for line in killed_log.read_text().splitlines()]
    assert len(calls) == len(set(calls)), "a question was asked twice"
    assert len(calls) <= 28
    assert sorted(calls) == sorted(
        tuple(json.loads(x)) for x in straight_log.read_text().splitlines()
    )

    a, b = read_metrics(straight), read_metrics(killed)
    assert [m["step"] for m in b] == [m["step"] for m in a]
    assert a[-1]["queries/used"] <= 28 and a[-1]["step"] == 5  # stopped by the budget
    for x, y in zip(a, b, strict=True):
        assert y["queries/used"] == x["queries/used"]
        for key in ("objective/scores", "objective/kl", "loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=1e-5), (key, x["step"])
    assert store_rows(killed) == store_rows(straight)
    wa = load_file(str(straight / "final" / "model.safetensors"))
    wb = load_file(str(killed / "final" / "model.safetensors"))
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=0)
    ea = torch.load(straight / "ensemble.pt", weights_only=True)
    eb = torch.load(killed / "ensemble.pt", weights_only=True)
    assert ea["seen"] == eb["seen"] > 0
    for name in ("buffer_a", "buffer_p", "anchors"):
        torch.testing.assert_close(eb[name], ea[name], atol=1e-5, rtol=0)
    for name, value in ea["network"].items():
        torch.testing.assert_close(eb["network"][name], value, atol=1e-5, rtol=0)
