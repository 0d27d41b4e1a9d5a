"""Shared test set-up.

Tests keep their own cache home inside the checkout (`.cache/test-home`, git-ignored):
a fresh clone converts the default model once, later runs reuse it, and nothing touches
the user's `~/.cache/alignkit`. The hub is forced offline so no test can download.
"""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ALIGNKIT_HOME", str(ROOT / ".cache" / "test-home"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from alignkit.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture()
def write_jsonl(tmp_path):
    """Write records (dicts, or raw strings/bytes used as lines verbatim) to a JSONL file."""

    def write(records, name="data.jsonl"):
        path = tmp_path / name
        with open(path, "wb") as out:
            for record in records:
                if isinstance(record, bytes):
                    out.write(record + b"\n")
                elif isinstance(record, str):
                    out.write(record.encode() + b"\n")
                else:
                    out.write(json.dumps(record).encode() + b"\n")
        return path

    return write


WORDS = "apple river stone cloud tiger piano garden silver rocket candle forest mirror planet violin desert harbor".split()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random model saved as a Hugging Face folder (what users pass as model=)."""
    from alignkit.models.tiny import tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model(seed=0, tokenizer=tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def words_file(tmp_path_factory):
    """16 sft conversations, each a question with a one-word answer to memorise."""
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    with open(path, "w") as out:
        for i, word in enumerate(WORDS):
            conversation = [
                {"role": "user", "content": f"Word {i}?"},
                {"role": "assistant", "content": word},
            ]
            out.write(json.dumps({"messages": conversation}) + "\n")
    return path


@pytest.fixture(scope="session")
def mixed_length_sft_file(tmp_path_factory):
    """sft records of very different lengths, so token-weighted averaging matters."""
    path = tmp_path_factory.mktemp("data") / "mixed.jsonl"
    with open(path, "w") as out:
        for i in range(16):
            answer = " ".join(WORDS[: 1 + (i * 5) % 16])
            out.write(json.dumps({"prompt": f"List {i} words", "completion": answer}) + "\n")
    return path


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def preference_files(tmp_path_factory):
    """A synthetic preference task: the chosen reply agrees ("Yes, <word>."), the rejected
    one refuses ("No."). 32 training pairs and 16 held-out pairs on unseen words."""
    folder = tmp_path_factory.mktemp("prefs")
    nouns = (
        "apple river stone cloud tiger piano garden silver rocket candle forest mirror planet violin "
        "desert harbor castle meadow falcon lantern ocean pepper saddle temple valley wagon anchor "
        "basket cactus dragon engine feather glacier helmet island jungle kettle ladder magnet needle "
        "orchard parrot quartz rabbit statue tunnel"
    ).split()

    def pair(word):
        return {
            "prompt": [{"role": "user", "content": f"Can you say {word}?"}],
            "chosen": [{"role": "assistant", "content": f"Yes, {word}."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        }

    train, held_out = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(pair(w)) + "\n" for w in nouns[:32]))
    held_out.write_text("".join(json.dumps(pair(w)) + "\n" for w in nouns[32:48]))
    return train, held_out


GOOD_WORDS = "good great happy lovely wonderful bright kind".split()
BAD_WORDS = "bad awful sad ugly terrible dark cruel".split()
NEUTRAL_WORDS = "table river chair window paper music street garden".split()


def sentiment_words_reply(rng):
    """A reply of 3-6 words and its ground-truth reward: #good words - #bad words."""
    words = [
        rng.choice(GOOD_WORDS + BAD_WORDS + NEUTRAL_WORDS * 2) for _ in range(rng.randint(3, 6))
    ]
    return " ".join(words), sum(w in GOOD_WORDS for w in words) - sum(w in BAD_WORDS for w in words)


@pytest.fixture(scope="session")
def reward_task_files(tmp_path_factory):
    """A reward-model task with a known ground truth (#good - #bad words in the reply).
    train.jsonl: 192 pairs and 64 rankings of 3 replies; eval.jsonl: 64 held-out pairs."""
    import random

    folder = tmp_path_factory.mktemp("reward-task")
    prompt = [{"role": "user", "content": "Describe your day."}]

    def replies(rng, k):
        while True:
            drawn = [sentiment_words_reply(rng) for _ in range(k)]
            if len({reward for _, reward in drawn}) == k:
                return drawn

    def pair(rng):
        (a, ra), (b, rb) = replies(rng, 2)
        if ra < rb:
            a, b = b, a
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": b}],
        }

    def ranking(rng):
        drawn = replies(rng, 3)
        order = sorted(range(3), key=lambda i: -drawn[i][1])
        return {
            "prompt": prompt,
            "responses": [[{"role": "assistant", "content": text}] for text, _ in drawn],
            "ranking": order,
        }

    rng = random.Random(0)
    train = [pair(rng) if i % 4 else ranking(rng) for i in range(256)]
    held_out = [pair(random.Random(1000 + i)) for i in range(64)]
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, records in zip(paths, (train, held_out), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths
