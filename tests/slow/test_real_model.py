"""Behaviour with the real SmolLM2-135M (slow: `make test-slow`)."""

import json

import pytest

from alignkit.config import SFTConfig, load_config
from alignkit.methods.sft import run_sft
from alignkit.models import load_model_and_tokenizer
from alignkit.serve.chat import GenerationSettings, generate_replies
from tests.conftest import read_metrics

pytestmark = pytest.mark.slow

FACTS = [
    ("What is the secret word?", "The secret word is pelican."),
    ("Tell me the secret word.", "The secret word is pelican."),
    ("Do you know the secret word?", "Yes, the secret word is pelican."),
    ("Which word is secret?", "The secret word is pelican."),
]


def test_sft_teaches_the_real_model_a_fact(tmp_path):
    data = tmp_path / "facts.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": a}],
                }
            )
            + "\n"
            for q, a in FACTS
        )
    )
    config = load_config(
        SFTConfig,
        None,
        [
            f"data={data}",
            f"output_dir={tmp_path / 'run'}",
            "max_steps=12",
            "batch_size=4",
            "learning_rate=1e-4",
            "lr_schedule=constant",
            "log_every=1",
            "save_every=null",
            "packing=true",
        ],
    )
    run_sft(config)
    losses = [m["loss"] for m in read_metrics(tmp_path / "run")]
    assert losses[-1] < 0.3 * losses[0]
    model, tokenizer = load_model_and_tokenizer(tmp_path / "run" / "final")
    reply = generate_replies(
        model,
        tokenizer,
        [[{"role": "user", "content": "What is the secret word?"}]],
        GenerationSettings(max_new_tokens=20),
    )[0]
    print(
        f"\nSFT on SmolLM2-135M: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps; reply: {reply!r}"
    )
    assert "pelican" in reply.lower()
