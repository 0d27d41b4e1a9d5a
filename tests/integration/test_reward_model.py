"""Reward models end to end on a task with a known ground-truth reward (issue: reward models)."""

import json
import math
import random
import statistics
import tracemalloc

import pytest
import torch

from alignkit.config import RewardConfig
from alignkit.errors import AlignkitError
from alignkit.feedback.reward_model import RewardModelJudge, score_file
from alignkit.methods.reward import run_rm
from alignkit.models.lora import LoraSettings
from alignkit.models.reward import init_heads
from tests.conftest import read_metrics


def rm_config(tiny_model_dir, files, output_dir, **overrides):
    train, held_out = files
    settings = dict(
        model=str(tiny_model_dir),
        data=str(train),
        eval_data=str(held_out),
        output_dir=str(output_dir),
        learning_rate=1e-3,
        batch_size=16,
        epochs=3,
        log_every=12,
        save_every=None,
    )
    settings.update(overrides)
    return RewardConfig(**settings)


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, reward_task_files, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rm-run")
    run_rm(rm_config(tiny_model_dir, reward_task_files, run_dir))
    return run_dir


def eval_replies(held_out):
    records = [json.loads(line) for line in held_out.read_text().splitlines()]
    return [
        {"prompt": r["prompt"], "completion": r[side]}
        for r in records
        for side in ("chosen", "rejected")
    ]


def transformers_rewards(folder, conversations):
    """(N, K) rewards of chat conversations worked out without alignkit: plain
    `AutoModelForSequenceClassification` on the `apply_chat_template` text, one unpadded
    sequence at a time, minus the offset stored in the config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    for conversation in conversations:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        with torch.no_grad():
            rows.append(model(**tokenizer(text, return_tensors="pt")).logits[0])
    return torch.stack(rows) - torch.tensor(model.config.reward_offset)


def transformers_text_reward(folder, prompt, reply):
    """The K rewards of a plain-text prompt and reply without alignkit: the prompt's tokens,
    the reply's and EOS (the string-form encoding), minus the stored offset."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt)["input_ids"] + tokenizer(reply, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + [tokenizer.eos_token_id]])).logits[0]
    return logits - torch.tensor(model.config.reward_offset)


def test_held_out_accuracy_on_a_known_reward(trained_rm):
    final = read_metrics(trained_rm)[-1]
    assert final["eval/accuracy"] >= 0.9, final
    assert 0 <= final["eval/ece"] < 0.2
    assert {"eval/margin", "eval/rewards/mean", "eval/rewards/std"} <= set(final)
    logged = [m for m in read_metrics(trained_rm) if "accuracy" in m]
    assert logged[-1]["accuracy"] > logged[0]["accuracy"]


def test_saved_folder_scores_identically_through_transformers(trained_rm, reward_task_files):
    """Our scorer and a plain `AutoModelForSequenceClassification` + `apply_chat_template`
    pipeline (padded batch, the saved tokenizer's pad) agree once the stored offset is
    subtracted."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = trained_rm / "final"
    records = eval_replies(reward_task_files[1])[:24]
    ours = RewardModelJudge(final, device="cpu").score_records(records).scores

    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    texts = [
        tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        for r in records
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any(), "the batch should need padding"
    with torch.no_grad():
        theirs = model(**batch).logits[:, 0] - torch.tensor(model.config.reward_offset)
    torch.testing.assert_close(torch.tensor(ours), theirs, atol=1e-4, rtol=1e-4)


def test_rewards_are_centred_on_the_reference_set(trained_rm, reward_task_files):
    """norm_data defaults to eval_data: its responses score mean 0 after training."""
    scores = (
        RewardModelJudge(trained_rm / "final", device="cpu")
        .score_records(eval_replies(reward_task_files[1]))
        .scores
    )
    assert abs(statistics.mean(scores)) < 1e-4
    assert statistics.pstdev(scores) > 1.0  # and the rewards still separate replies


def test_judge_interface(trained_rm):
    """score() is the reward worked out with plain transformers; compare() is the
    Bradley-Terry probability sigmoid(r_a - r_b) of those rewards."""
    judge = RewardModelJudge(trained_rm / "final", device="cpu")
    prompt = [{"role": "user", "content": "Describe your day."}]
    good, bad = "great lovely happy table", "awful sad table"
    r_good, r_bad = transformers_rewards(
        trained_rm / "final",
        [prompt + [{"role": "assistant", "content": reply}] for reply in (good, bad)],
    )[:, 0].tolist()
    assert judge.score(prompt, good) == pytest.approx(r_good, abs=1e-4)
    assert judge.score(prompt, bad) == pytest.approx(r_bad, abs=1e-4)
    assert r_good > r_bad  # the trained model prefers the reply with the good words
    p = judge.compare(prompt, good, bad)
    assert p == pytest.approx(1 / (1 + math.exp(r_bad - r_good)), abs=1e-4)
    assert p > 0.9
    assert judge.compare(prompt, bad, good) == pytest.approx(1 - p)


def test_ensemble_is_less_certain_out_of_distribution(tiny_model_dir, reward_task_files, tmp_path):
    run_rm(rm_config(tiny_model_dir, reward_task_files, tmp_path / "ens", num_heads=4))
    judge = RewardModelJudge(tmp_path / "ens" / "final", device="cpu")
    in_distribution = judge.score_records(eval_replies(reward_task_files[1]))
    rng = random.Random(0)
    unfamiliar = "quantum enzyme volcano algebra protocol saxophone mitochondria carburetor".split()
    out_of_distribution = judge.score_records(
        [
            {
                "prompt": [
                    {"role": "user", "content": "What is the weather in Paris tomorrow and why?"}
                ],
                "completion": [
                    {
                        "role": "assistant",
                        "content": " ".join(
                            rng.choice(unfamiliar) for _ in range(rng.randint(8, 20))
                        ),
                    }
                ],
            }
            for _ in range(64)
        ]
    )
    inside, outside = (
        statistics.mean(in_distribution.stds),
        statistics.mean(out_of_distribution.stds),
    )
    assert outside > 1.2 * inside, (inside, outside)
    final = read_metrics(tmp_path / "ens")[-1]
    assert final["eval/accuracy"] >= 0.9


def test_scoring_streams_in_bounded_memory(trained_rm, tmp_path):
    """Peak Python memory while scoring 10,000 records is about that of 2,000 (a scorer
    that held the file would need ~5x)."""
    judge = RewardModelJudge(trained_rm / "final", device="cpu", batch_size=64)

    def write(n):
        path = tmp_path / f"in-{n}.jsonl"
        with open(path, "w") as out:
            for i in range(n):
                out.write(
                    json.dumps(
                        {"prompt": f"Day {i}:", "completion": f"a good day number {i}", "id": i}
                    )
                    + "\n"
                )
        return path

    peaks = {}
    for n in (2_000, 10_000):
        source, target = write(n), tmp_path / f"out-{n}.jsonl"
        tracemalloc.start()
        result = score_file(judge, source, target, progress=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.written == n
    lines = (tmp_path / "out-10000.jsonl").read_text().splitlines()
    assert len(lines) == 10_000
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["id"] == 0 and last["id"] == 9_999
    for record in (first, last):
        expected = transformers_text_reward(
            trained_rm / "final", record["prompt"], record["completion"]
        )
        assert record["score"] == pytest.approx(expected.item(), abs=1e-4)
    assert peaks[10_000] < 1.5 * peaks[2_000], peaks


def test_ensemble_scores_carry_a_std_in_files(tiny_model_dir, reward_task_files, tmp_path):
    run_rm(
        rm_config(
            tiny_model_dir,
            reward_task_files,
            tmp_path / "run",
            num_heads=2,
            max_steps=2,
            eval_data=None,
        )
    )
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "good"},
                ]
            }
        )
        + "\n"
    )
    judge = RewardModelJudge(tmp_path / "run" / "final", device="cpu")
    score_file(judge, source, tmp_path / "out.jsonl", progress=False)
    record = json.loads((tmp_path / "out.jsonl").read_text())
    # the two heads' rewards with plain transformers: the score is their mean and
    # score_std their (population) standard deviation, for two values half their gap
    first, second = transformers_rewards(tmp_path / "run" / "final", [record["messages"]])[0]
    assert record["score"] == pytest.approx(float(first + second) / 2, abs=1e-4)
    assert record["score_std"] == pytest.approx(abs(float(first - second)) / 2, abs=1e-4)
    assert record["score_std"] > 1e-3  # the heads start from different priors
    final = read_metrics(tmp_path / "run")[-1]
    assert "train/accuracy" in final  # without eval_data the summary uses the training pairs


def test_lora_reward_model_saves_a_full_classifier(tiny_model_dir, reward_task_files, tmp_path):
    """One AdamW step of a rank-4 LoRA reward model, saved merged. Worked out by hand:
    AdamW's first step moves every trained coordinate by exactly the learning rate
    (m_hat = g, sqrt(v_hat) = |g|, so the update is lr * sign(g); weight decay 0), so the
    head, trained in full, moves by lr everywhere. The LoRA B matrices start at 0, so the
    A matrices get no gradient in that step, and each adapted weight changes by
    (alpha / r) * B @ A: a non-zero matrix of rank at most r = 4 (a full fine-tune would
    change it in full rank, a lost merge not at all). Weights LoRA does not adapt
    (embeddings, norms) are saved as they were."""
    from transformers import AutoModelForSequenceClassification

    lr, rank = 1e-3, 4
    run_rm(
        rm_config(
            tiny_model_dir,
            reward_task_files,
            tmp_path / "lora",
            max_steps=1,
            learning_rate=lr,
            lr_schedule="constant",
            weight_decay=0.0,
            lora=LoraSettings(r=rank, alpha=8, dropout=0.0),
        )
    )
    final = tmp_path / "lora" / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert len(model.config.reward_offset) == 1
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    init_heads(fresh, seed=0)
    head_step = (model.score.weight - fresh.score.weight).abs()
    torch.testing.assert_close(head_step, torch.full_like(head_step, lr), rtol=1e-3, atol=0)
    base = dict(fresh.model.named_parameters())
    adapted = 0
    for name, weight in model.model.named_parameters():
        delta = (weight - base[name]).detach()
        if weight.dim() == 2 and name.endswith("proj.weight"):  # every linear layer
            singular = torch.linalg.svdvals(delta.double())  # descending
            assert singular[rank] < 1e-4 * singular[0], (name, singular[: rank + 1])
            adapted += 1
        else:
            assert torch.equal(weight, base[name]), name
    assert adapted == 7 * fresh.config.num_hidden_layers  # q k v o gate up down per layer
    score = RewardModelJudge(final, device="cpu").score("Hi", "good day")
    assert score == pytest.approx(
        transformers_text_reward(final, "Hi", "good day").item(), abs=1e-4
    )


def test_a_reward_model_saved_by_transformers_scores_as_transformers_reads_it(tmp_path, tokenizer):
    """A foreign folder whose pad id is the EOS our string-form encoding appends:
    transformers reads the rightmost non-pad token, and so must we."""
    from transformers import LlamaForSequenceClassification

    from alignkit.models.tiny import tiny_config

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1)).eval()
    assert model.config.pad_token_id == tokenizer.eos_token_id
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts, replies = ["Say hi", "Tell me a story"], ["hi there", "once upon a time"]
    ours = RewardModelJudge(tmp_path, device="cpu").score_batch(prompts, replies)
    for prompt, reply, score in zip(prompts, replies, ours, strict=True):
        ids = (
            tokenizer(prompt)["input_ids"] + tokenizer(reply, add_special_tokens=False)["input_ids"]
        )
        ids = ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0, 0].item()
        assert score == pytest.approx(theirs, abs=1e-5)


def test_resume_continues_exactly(tiny_model_dir, reward_task_files, tmp_path):
    """4 steps with a checkpoint at 2, resumed to 6 == 6 uninterrupted steps."""
    common = dict(batch_size=4, lr_schedule="constant", eval_data=None, save_every=2)
    run_rm(rm_config(tiny_model_dir, reward_task_files, tmp_path / "a", max_steps=6, **common))
    run_rm(rm_config(tiny_model_dir, reward_task_files, tmp_path / "b", max_steps=4, **common))
    run_rm(
        rm_config(
            tiny_model_dir, reward_task_files, tmp_path / "b", max_steps=6, resume="auto", **common
        )
    )
    prompts, replies = ["Describe your day."] * 2, ["good table", "sad river"]
    straight = RewardModelJudge(tmp_path / "a" / "final", device="cpu").score_batch(
        prompts, replies
    )
    resumed = RewardModelJudge(tmp_path / "b" / "final", device="cpu").score_batch(prompts, replies)
    assert resumed == pytest.approx(straight, abs=1e-5)


def mean_read_out_rewards(folder, records):
    """(N,) rewards of a `pooling=mean` folder worked out without alignkit's scorer: the
    plain `apply_chat_template` tokens, the backbone's last hidden states, their mean from
    the first reply token through the end-of-turn token, the head, minus the offset."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for record in records:
        prompt = tokenizer(
            tokenizer.apply_chat_template(
                record["prompt"], tokenize=False, add_generation_prompt=True
            )
        )["input_ids"]
        conversation = record["prompt"] + record["completion"]
        ids = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False))["input_ids"]
        assert ids[: len(prompt)] == prompt
        last = max(i for i, token in enumerate(ids) if token == end_of_turn)
        with torch.no_grad():
            states = model.model(torch.tensor([ids])).last_hidden_state[0]
            rows.append(model.score(states[len(prompt) : last + 1].mean(0)))
    return torch.stack(rows)[:, 0] - model.config.reward_offset[0]


def test_mean_read_out_learns_and_scores_as_its_definition(
    tiny_model_dir, reward_task_files, tmp_path
):
    """pooling=mean: the folder says so, it learns the known reward, and alignkit's scorer
    (padded batches) equals the mean of the reply tokens' states read by the head."""
    run_rm(rm_config(tiny_model_dir, reward_task_files, tmp_path, pooling="mean", epochs=2))
    final = tmp_path / "final"
    assert json.loads((final / "config.json").read_text())["reward_pooling"] == "mean"
    assert read_metrics(tmp_path)[-1]["eval/accuracy"] >= 0.9
    records = eval_replies(reward_task_files[1])[:12]
    ours = RewardModelJudge(final, device="cpu", batch_size=5).score_records(records).scores
    theirs = mean_read_out_rewards(final, records)
    torch.testing.assert_close(torch.tensor(ours), theirs, atol=1e-4, rtol=1e-4)
    # and it differs from what the last token alone would give
    last = transformers_rewards(final, [r["prompt"] + r["completion"] for r in records])[:, 0]
    assert not torch.allclose(torch.tensor(ours), last, atol=1e-2)

    # a reward model keeps the read-out it was trained with
    with pytest.raises(AlignkitError, match="pooling=mean"):
        run_rm(rm_config(final, reward_task_files, tmp_path / "more", pooling="last", max_steps=1))
