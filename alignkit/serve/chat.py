"""Chat with a model: batched replies to conversations, and a stateful session.

Prompts are rendered with the same `ChatEncoder` used for training, so a model sees at
chat time exactly the prompt format it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.rollout.sampling import SamplingSettings, sample
from alignkit.serve.text import visible_text


@dataclass
class GenerationSettings(SamplingSettings):
    """Sampling settings with chat defaults: greedy (temperature 0), up to 256 new tokens."""

    max_new_tokens: int = 256
    temperature: float = 0.0


def generate_replies(
    model, tokenizer, conversations: list[list[dict]], settings: GenerationSettings
) -> list[str]:
    """Reply to each conversation (a list of `{role, content}` ending with a user turn),
    through the project's one sampler; stop strings are cut from the reply."""
    encoder = ChatEncoder(tokenizer)
    prompts = [encoder.encode_prompt(conversation) for conversation in conversations]
    rollout = sample(
        model,
        prompts,
        settings,
        eos_ids=encoder.stop_token_ids,
        pad_id=pad_token_id(tokenizer),
        tokenizer=tokenizer,
    )
    return [
        visible_text(tokenizer, ids, settings.stop_strings)[0].strip()
        for ids in rollout.completion_lists()
    ]


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
