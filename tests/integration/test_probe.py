"""`alignkit probe` end to end: a tiny local model through the CLI, and a model served by
`alignkit serve` reached as `openai:URL`."""

import json

import torch

from alignkit.cli import main
from alignkit.evaluate.intervals import wilson_interval
from alignkit.models.tiny import tiny_model
from tests.servers import serving

REFUSAL = "I'm sorry, but I can't help with that."


def check_report(report, families, n):
    """The documented schema: baseline and families {kind, asr, ci, n, ...} with Wilson
    intervals, refusal {compliance, over_refusal} rates."""
    assert set(report) >= {"model", "detector", "settings", "baseline", "families", "refusal"}
    assert list(report["families"]) == families
    for summary in [report["baseline"], *report["families"].values()]:
        assert summary["n"] == n and 0.0 <= summary["asr"] <= 1.0
        assert summary["ci"] == list(wilson_interval(summary["k"], summary["n"]))
        assert summary["asr"] == summary["k"] / summary["n"]
    for name in ("compliance", "over_refusal"):
        rate = report["refusal"][name]
        assert rate["n"] == n and rate["ci"] == list(wilson_interval(rate["k"], rate["n"]))


def read_transcripts(out):
    return [json.loads(line) for line in out.with_name(f"{out.stem}.transcripts.jsonl").open()]


def test_probe_cli_on_a_tiny_local_model(tiny_model_dir, tmp_path, capsys):
    """A random tiny model ends its replies at once: nothing is refused, every jailbreak
    "succeeds", no canary is emitted."""
    out = tmp_path / "probe.json"
    code = main(
        [
            "-q", "probe", "--model", str(tiny_model_dir),
            "--families", "roleplay,base64,injection-webpage", "--limit", "2",
            "--max-new-tokens", "6", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    check_report(report, ["roleplay", "base64", "injection-webpage"], n=2)
    assert report["families"]["roleplay"]["asr"] == 1.0
    assert report["families"]["injection-webpage"]["asr"] == 0.0
    assert report["refusal"]["over_refusal"]["rate"] == 0.0
    assert len(read_transcripts(out)) == 2 * 5
    printed = capsys.readouterr().out
    assert "baseline (no attack)" in printed and "injection-webpage" in printed
    assert "probe.transcripts.jsonl" in printed


def refusing_model(tokenizer, text=REFUSAL):
    """A tiny model that answers every chat with `text`, greedily: its layers add nothing
    (output projections zero), so the last hidden state is the current token's embedding,
    and the head maps each token of "\\n" + text to the next one, then to end of turn."""
    model = tiny_model(seed=3, tokenizer=tokenizer, tie_word_embeddings=False).eval()
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    chain = [newline, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    chain.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert len(set(chain)) == len(chain), "each token may lead to one next token only"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = model.model.embed_tokens.weight
        model.lm_head.weight.zero_()
        for current, following in zip(chain, chain[1:], strict=False):
            model.lm_head.weight[following] = 50 * embeddings[current] / embeddings[current].norm()
    return model


def test_probe_against_a_served_model(tokenizer, tmp_path):
    """`--model openai:URL --served-model NAME` probes through the OpenAI-compatible API:
    a model that always refuses has ASR 0 everywhere and refuses every safe request."""
    out = tmp_path / "served.json"
    with serving(refusing_model(tokenizer), tokenizer, "refuser") as (url, engine):
        code = main(
            [
                "-q", "probe", "--model", f"openai:{url}", "--served-model", "refuser",
                "--families", "dan,few-shot", "--limit", "3", "--max-new-tokens", "16",
                "--out", str(out),
            ]
        )  # fmt: skip
        served = engine.stats()["completions"]
    assert code == 0
    report = json.loads(out.read_text())
    check_report(report, ["few-shot", "dan"], n=3)
    assert report["model"] == f"openai:{url}"
    assert report["baseline"]["asr"] == 0.0 and report["families"]["dan"]["asr"] == 0.0
    assert report["refusal"]["over_refusal"]["rate"] == 1.0
    transcripts = read_transcripts(out)
    assert served == len(transcripts) == 3 * 4
    assert {t["reply"] for t in transcripts} == {REFUSAL}


def test_served_model_needs_its_name(tmp_path, capsys):
    assert (
        main(
            ["probe", "--model", "openai:http://127.0.0.1:9/v1", "--out", str(tmp_path / "p.json")]
        )
        == 2
    )
    assert "--served-model NAME" in capsys.readouterr().err
