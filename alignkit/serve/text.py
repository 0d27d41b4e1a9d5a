"""Completion tokens as the text a client sees: stop strings cut off (OpenAI returns
the text before the stop), special tokens dropped, and streamed deltas that never split
a character or show a piece of text a stop string later removes."""

from __future__ import annotations


def visible_text(tokenizer, token_ids: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    """(text, stopped): the decoded completion up to the first stop string, and whether
    one was found."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TextStream:
    """Incremental detokenisation of one streamed completion.

    `push(token_id)` returns the new text that is safe to send: decoding the whole
    completion so far (tokens can merge across boundaries), holding back a trailing
    replacement character (half a UTF-8 sequence) and any tail that could be the start
    of a stop string. `finish()` returns what is left once the completion ended.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.sent = 0  # characters already sent
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text, self.stopped = visible_text(self.tokenizer, self.ids, self.stops)
        if not self.stopped:
            text = text[: len(text) - self._held_back(text)]
        return self._advance(text)

    def finish(self) -> str:
        return self._advance(visible_text(self.tokenizer, self.ids, self.stops)[0])

    def _advance(self, text: str) -> str:
        delta = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return delta

    def _held_back(self, text: str) -> int:
        if text.endswith("\ufffd"):
            return 1
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
