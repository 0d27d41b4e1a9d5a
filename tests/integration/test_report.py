"""`alignkit report`: what it finds in run folders, the numbers it draws, and the page
in a real browser (headless Chromium, network off)."""

import json

import pytest

from alignkit.cli import main
from alignkit.report.collect import collect
from alignkit.report.figures import frontier_points, training_curves
from tests.browser import open_offline, start_chromium

HOSTILE = '<script>window.hacked = 1</script><img src="http://example.invalid/x.png">'


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def results(tmp_path):
    """A folder as a user accumulates it: a DPO run, a PPO run with evaluation points,
    an `alignkit eval` result, a probe result, token reward maps, a quickstart summary,
    and files that are none of these."""
    root = tmp_path / "runs"
    dpo = root / "dpo"
    dpo.mkdir(parents=True)
    (dpo / "config.yaml").write_text("model: tiny\nbeta: 0.1\nlearning_rate: 1.0e-05\n")
    write_jsonl(
        dpo / "metrics.jsonl",
        [
            {
                "step": 1,
                "loss": 0.69,
                "rewards/margins": 0.0,
                "rewards/accuracies": 0.5,
                "lr": 1e-5,
            },
            {
                "step": 2,
                "loss": 0.60,
                "rewards/margins": 0.3,
                "rewards/accuracies": 0.75,
                "lr": 5e-6,
            },
            {"step": 2, "eval/loss": 0.65, "eval/rewards/margins": 0.1},
        ],
    )
    (dpo / "metrics.jsonl").open("a").write('{"step": 3, "loss": 0.5')  # cut off by a kill
    (dpo / "checkpoints" / "step-2").mkdir(parents=True)
    write_jsonl(dpo / "checkpoints" / "step-2" / "metrics.jsonl", [{"step": 99}])  # not a run
    ppo = root / "ppo"
    ppo.mkdir()
    write_jsonl(
        ppo / "metrics.jsonl",
        [
            {"step": 1, "objective/scores": 0.1, "objective/kl": 0.0},
            {"step": 2, "objective/scores": 0.3, "objective/kl": 1.5},
            {"step": 2, "eval/objective/scores": 0.25, "eval/objective/kl": 1.2},
            {"step": 4, "eval/objective/scores": 0.45, "eval/objective/kl": 3.0},
        ],
    )
    write_jsonl(
        ppo / "samples.jsonl",
        [
            {"step": 1, "prompt": "Opening", "completion": HOSTILE, "score": -0.5},
            {"step": 4, "prompt": "Opening", "completion": "A lovely film.", "score": 0.9},
        ],
    )
    (root / "eval.json").write_text(
        json.dumps(
            {
                "policy": "runs/dpo/final",
                "num_prompts": 2,
                "samples": "eval.samples.jsonl",
                "metrics": {
                    "eval/reward": {"value": 0.4, "ci": [0.3, 0.55], "n": 2},
                    "eval/kl_seq": {"value": 2.5, "ci": [2.0, 3.0], "n": 2},
                },
                "reference_metrics": {"eval/reward": {"value": 0.1, "ci": [0.0, 0.2], "n": 2}},
                "comparison": {"wins": 1, "ties": 0, "losses": 1, "failures": 0},
            }
        )
    )
    write_jsonl(
        root / "eval.samples.jsonl",
        [
            {
                "prompt": "Hi",
                "policy": {"completion": HOSTILE, "score": 0.2},
                "reference": {"completion": "Hello", "score": 0.1},
            }
        ],
    )
    (root / "probe.json").write_text(
        json.dumps(
            {
                "families": {
                    "roleplay": {"kind": "jailbreak", "asr": 0.25, "ci": [0.1, 0.5], "n": 8},
                    "ignore_previous": {"kind": "injection", "asr": 0.5, "ci": [0.2, 0.8], "n": 4},
                },
                "refusal": {
                    "compliance": {"rate": 0.3, "ci": [0.2, 0.4], "n": 10},
                    "over_refusal": {"rate": 0.1, "ci": [0.02, 0.3], "n": 10},
                },
            }
        )
    )
    (root / "eval.token_rewards.json").write_text(
        json.dumps(
            [
                {
                    "prompt": "Hi",
                    "response": "Good <b>",
                    "beta": 0.1,
                    "total": 0.3,
                    "tokens": ["Good", " <b>"],
                    "token_ids": [1, 2],
                    "values": [0.4, -0.1],
                }
            ]
        )  # fmt: skip
    )
    (root / "summary.json").write_text(
        json.dumps(
            {
                "task": "sentiment-chat",
                "held_out_prompts": 2,
                "preset": "tiny",
                "policies": {
                    "start": {
                        "oracle_reward": 0.1,
                        "reward_sem": 0.05,
                        "kl_to_start": 0.0,
                        "mean_length": 5,
                    },
                    "dpo": {
                        "oracle_reward": 0.5,
                        "reward_sem": 0.1,
                        "kl_to_start": 2.0,
                        "mean_length": 6,
                        "win_rate": 1.0,
                    },
                },
            }
        )  # fmt: skip
    )
    write_jsonl(
        root / "samples_before_after.jsonl",
        [{"prompt": "Hi", "start": "meh", "dpo": "great", "start_score": 0.0, "dpo_score": 0.6}],
    )
    (root / "notes.json").write_text('{"anything": 1}')  # not a result: ignored
    (root / "broken.json").write_text("{")  # being written: ignored
    return root


def test_collect_sorts_files_by_what_they_hold(results):
    found = collect([results])
    assert [r.name for r in found.runs] == ["runs/dpo", "runs/ppo"]
    dpo = found.runs[0]
    assert [m["step"] for m in dpo.metrics] == [1, 2, 2]  # the cut-off last line is left out
    assert dpo.config_text.startswith("model: tiny")
    assert [r.name for r in found.evaluations] == ["runs/eval"]
    assert found.evaluations[0].samples[0]["reference"]["completion"] == "Hello"
    assert [r.name for r in found.probes] == ["runs/probe"]
    assert [r.name for r in found.token_maps] == ["runs/eval.token_rewards"]
    assert [r.name for r in found.summaries] == ["runs/summary"]
    assert found.summaries[0].samples[0]["dpo"] == "great"


def test_training_curves_draw_each_logged_metric_with_its_eval_points(results):
    panels = {p["title"]: p["figure"] for p in training_curves(collect([results]).runs[0])}
    assert set(panels) == {
        "loss", "reward margin (chosen - rejected)", "preference accuracy", "learning rate"
    }  # fmt: skip
    loss = {trace["name"]: trace for trace in panels["loss"]["data"]}
    assert loss["loss"]["x"] == [1, 2] and loss["loss"]["y"] == [0.69, 0.60]
    assert loss["eval/loss"]["x"] == [2] and loss["eval/loss"]["y"] == [0.65]


def test_frontier_points_come_from_summaries_evals_and_rl_evaluations(results):
    """Summary rows get reward ± 1.96 s.e.; eval results their bootstrap interval; an RL
    run's evaluation points form one series in step order."""
    points = {p["name"]: p for p in frontier_points(collect([results]))}
    dpo = points["runs/summary: dpo"]
    assert (dpo["kl"], dpo["reward"]) == (2.0, 0.5)
    assert dpo["reward_low"] == pytest.approx(0.5 - 1.96 * 0.1)
    assert dpo["reward_high"] == pytest.approx(0.5 + 1.96 * 0.1)
    evaluated = points["runs/eval"]
    assert (evaluated["kl"], evaluated["reward"]) == (2.5, 0.4)
    assert (evaluated["reward_low"], evaluated["reward_high"]) == (0.3, 0.55)
    ppo = [p for p in points.values() if p["series"] == "runs/ppo"]
    assert [(p["kl"], p["reward"]) for p in ppo] == [(1.2, 0.25), (3.0, 0.45)]


def test_report_command_refuses_what_it_cannot_report(tmp_path, capsys):
    (tmp_path / "notes.json").write_text("{}")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "notes.json")]) == 2
    assert "not a result alignkit can report" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "nothing to report" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chromium():
    driver = start_chromium()
    yield driver
    driver.quit()


def test_every_plot_renders_offline_and_run_text_stays_text(results, chromium):
    """Opened from file:// with the network off: every plot has an SVG with size and
    traces, nothing was fetched, the console is clean, and a completion holding a script
    and an image tag is shown as text (the script never ran, the image never loaded)."""
    assert main(["report", str(results), "--out", str(results / "report.html")]) == 0
    page = open_offline(chromium, results / "report.html")
    # frontier, 4 DPO panels, 2 PPO panels (score, KL), the probe's ASR chart
    assert page.plots == 8
    for plot in page.drawn:
        assert plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["traces"] >= 1, plot
    assert page.console_errors == []
    assert page.resources == []
    assert chromium.execute_script("return window.hacked === undefined")
    shown = chromium.find_element("tag name", "body").text
    assert HOSTILE in shown  # twice: the PPO sample and the eval sample
    assert "Compliance with harmful requests: 0.300" in shown
