"""`sentiment`: continue the opening of a movie review; the oracle rewards positive text.

It stands in for the controlled-sentiment experiment of the DPO paper (Rafailov et al.
2023, Sec. 6.1: IMDb review prefixes, a sentiment classifier as the ground-truth
reward). Here the prompts are review openings written for alignkit and the oracle is
VADER's compound sentiment score of the completion (Hutto and Gilbert 2014), in [-1, 1]:
rule-based, deterministic, and fast enough to label thousands of samples on a CPU.

Prompts are plain text (no chat template): the model continues the review; the
`sentiment-chat` variant asks for the same continuation in a chat message. Train and
held-out prompts share openers but never a film, so held-out reward measures
generalisation to new subjects.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

OPENERS = (
    "I watched {film} last night and",
    "My honest review of {film}:",
    "I went into {film} with low expectations, and",
    "After seeing {film} twice, I can say that",
    "The first thing you notice about {film} is",
    "I was not sure what to expect from {film}, but",
    "{film} is the kind of movie that",
    "Everyone told me to see {film}. Well,",
    "The acting in {film}",
    "The script of {film}",
    "Halfway through {film}, I realised",
    "Let me be clear about {film}:",
    "My friends dragged me to {film}, and",
    "Watching {film} with my family,",
    "The soundtrack of {film}",
    "If you are thinking about seeing {film},",
    "Critics have been talking about {film}, and in my opinion",
    "The ending of {film}",
    "I rented {film} on a rainy Sunday and",
    "Compared with the director's earlier work, {film}",
)
FILMS = (
    "this film",
    "this movie",
    "the sequel",
    "this documentary",
    "this comedy",
    "this horror film",
    "this romantic drama",
    "this animated feature",
    "this thriller",
    "this western",
    "The Last Harbor",
    "Midnight in Copper Town",
    "The Glass Orchard",
    "Seven Winters",
    "The Paper Kingdom",
    "Echoes of the Valley",
    "A River Called Home",
    "The Lantern Keeper",
    "Northbound",
    "The Silent Conductor",
)
HELD_OUT_FILMS = FILMS[-4:]  # films never seen in training prompts


def prompts(split: str = "train") -> list[str]:
    """Review openings: 'train' (320 prompts) or 'test' (80, on unseen films), in a fixed
    shuffled order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    films = [f for f in FILMS if (f in HELD_OUT_FILMS) == (split == "test")]
    out = [opener.format(film=film) for film in films for opener in OPENERS]
    out = [p[0].upper() + p[1:] for p in out]
    random.Random(0 if split == "train" else 1).shuffle(out)
    return out


@functools.lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def oracle(prompt, completion: str) -> float:
    """VADER compound sentiment of the completion alone, in [-1, 1] (0 for empty text)."""
    text = completion if isinstance(completion, str) else completion[-1]["content"]
    return float(_analyzer().polarity_scores(text)["compound"]) if text.strip() else 0.0


@dataclass(frozen=True)
class Task:
    name: str
    prompts: object
    oracle: object
    max_new_tokens: int


def chat_prompts(split: str = "train") -> list[list[dict]]:
    """The same openings as one-message chats, "Continue this movie review: <opening>",
    for chat models (the instruction-tuned default model answers a chat more naturally
    than it continues raw text)."""
    return [
        [{"role": "user", "content": f"Continue this movie review: {opening}"}]
        for opening in prompts(split)
    ]


TASK = Task(name="sentiment", prompts=prompts, oracle=oracle, max_new_tokens=48)
CHAT_TASK = Task(name="sentiment-chat", prompts=chat_prompts, oracle=oracle, max_new_tokens=48)
