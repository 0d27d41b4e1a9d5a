"""Chat with a model: batched replies to conversations, and a stateful session.

Prompts are rendered with the same `ChatEncoder` used for training, so a model sees at
chat time exactly the prompt format it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collators import PaddingCollator
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.rollout.sampling import SamplingSettings


@dataclass
class GenerationSettings(SamplingSettings):
    """Sampling settings with chat defaults: greedy (temperature 0), up to 256 new tokens."""

    max_new_tokens: int = 256
    temperature: float = 0.0


@torch.no_grad()
def generate_replies(
    model, tokenizer, conversations: list[list[dict]], settings: GenerationSettings
) -> list[str]:
    """Reply to each conversation (a list of `{role, content}` ending with a user turn)."""
    encoder = ChatEncoder(tokenizer)
    prompts = [{"input_ids": encoder.encode_prompt(conversation)} for conversation in conversations]
    pad_id = pad_token_id(tokenizer)
    batch = PaddingCollator(pad_id, padding_side="left")(prompts)
    device = next(model.parameters()).device
    sampling = settings.temperature > 0
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    options = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if sampling:
        options.update(
            temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None
        )
    else:  # silence generation_config sampling defaults that greedy decoding ignores
        options.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    output = model.generate(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        **options,
    )
    model.train(was_training)
    new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
    return [
        tokenizer.decode(
            _until_eos(tokens, tokenizer.eos_token_id), skip_special_tokens=True
        ).strip()
        for tokens in new_tokens
    ]


def _until_eos(tokens: list[int], eos_id: int | None) -> list[int]:
    """Cut at the first EOS; later positions are padding (which may share the EOS id)."""
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


class ChatSession:
    """A multi-turn conversation with one model; `ask` appends both turns to history."""

    def __init__(
        self,
        model,
        tokenizer,
        settings: GenerationSettings | None = None,
        system: str | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or GenerationSettings()
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = (
            [{"role": "system", "content": self.system}] if self.system else []
        )

    def ask(self, text: str) -> str:
        self.messages.append({"role": "user", "content": text})
        reply = generate_replies(self.model, self.tokenizer, [self.messages], self.settings)[0]
        self.messages.append({"role": "assistant", "content": reply})
        return reply
