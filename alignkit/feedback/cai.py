"""SL-CAI: the supervised stage of Constitutional AI (Bai et al. 2022, section 3).

For each prompt the model answers, then criticises and rewrites its own answer, N times:

    [few-shot example conversations] + prompt -> initial response
      -> critique request of principle 1 -> critique -> revision request 1 -> revision 1
      -> critique request of principle 2 -> ...                      -> revision N

Each critique and revision request is one more user turn of the same conversation, and
each revision round draws its own principle from the constitution (seeded per prompt and
round, so a resumed run asks the same thing). Few-shot examples (whole conversations of
this shape, from a file) are prepended as earlier turns: the paper found that small
models need them to follow the critique / revision format.

Outputs, in `out_dir`:

- `sft.jsonl`: `{"messages": prompt + [final revision as the assistant turn]}`; the
  critiques and few-shot turns are not in it: the model is fine-tuned to give the revised
  answer straight away;
- `preference.jsonl`: `{"prompt", "chosen": final revision, "rejected": initial response,
  "principles"}` (left out when the revisions changed nothing);
- `steps.jsonl`: every intermediate step, for reading what the constitution did.

Every reply is stored in the label store (`out_dir/labels.sqlite`) as it is generated, so
a killed run resumes at the step it reached; outputs are rewritten from the store at the
end of every run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from alignkit.data.loading import load_records
from alignkit.data.records import Kind
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback.constitution import Constitution, Principle, load_constitution
from alignkit.feedback.label_store import LabelStore
from alignkit.feedback.labelling import (
    PromptItem,
    RunReport,
    file_digest,
    labelling_options,
    read_prompt_items,
    run_items,
    spec_name,
)

log = logging.getLogger("alignkit")

OUTPUTS = ("sft", "preference", "steps")
FEW_SHOT_ROLES = ("user", "assistant")


@dataclass(frozen=True)
class CAISettings:
    """revisions: critique-revision rounds per prompt. seed: drives sampling and the
    principle drawn per round. max_new_tokens, temperature, top_p: sampling of every
    reply (initial response, critiques, revisions)."""

    revisions: int = 1
    seed: int = 0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.revisions < 1:
            raise AlignkitError(f"--revisions must be at least 1, got {self.revisions}")


@dataclass(frozen=True)
class Step:
    """One reply of the chain: its stage name, the user turn that asks for it (None for
    the initial response, which answers the prompt itself) and the principle behind it."""

    name: str
    request: str | None = None
    principle: Principle | None = None


def revise_prompts(
    model,
    data: str | Path,
    out_dir: str | Path,
    *,
    constitution: Constitution | str | Path | None = None,
    few_shot: str | Path | None = None,
    settings: CAISettings = CAISettings(),
    model_options: dict[str, Any] | None = None,
    batch_size: int = 8,
    max_attempts: int = 3,
    progress: bool = True,
) -> RunReport:
    """Run SL-CAI over `data` (prompt records) and write `sft.jsonl`,
    `preference.jsonl` and `steps.jsonl` to `out_dir`.

    model: a generator or a spec for `load_generator` (a model, or `openai:BASE_URL` with
    `model_options={"model": NAME}`), loaded only if there is work left. constitution: a
    `Constitution`, a file, or None for the default. few_shot: a file of sft records with
    `messages` (user and assistant turns), prepended to every conversation.
    """
    if not isinstance(constitution, Constitution):
        constitution = load_constitution(constitution)
    out_dir = Path(out_dir)
    items = read_prompt_items(data)
    examples = load_few_shot(few_shot) if few_shot is not None else []
    model_options = dict(model_options or {})
    config = {
        "kind": "cai",
        "model": spec_name(model),
        "model_options": labelling_options(model_options),
        "constitution": constitution.name,
        "principles": constitution.fingerprint(),
        "few_shot": file_digest(few_shot) if few_shot is not None else None,
        **asdict(settings),
    }

    def make_step(store, report):
        return _Chain(
            store=store,
            generator=functools.cache(lambda: _load_generator(model, model_options)),
            constitution=constitution,
            few_shot=examples,
            settings=settings,
            report=report,
        ).run

    return run_items(
        out_dir,
        config,
        data,
        items,
        make_step=make_step,
        outputs={name: out_dir / f"{name}.jsonl" for name in OUTPUTS},
        max_attempts=max_attempts,
        batch_size=batch_size,
        progress=progress,
        desc="revising",
    )


def load_few_shot(path: str | Path) -> list[dict]:
    """The messages of every example conversation in `path`, in order. Examples are
    earlier turns of the conversation, so only user and assistant turns, each example
    ending with the assistant."""
    loaded = load_records(path, Kind.SFT)
    messages: list[dict] = []
    for number, record in enumerate(loaded.records, 1):
        turns = record.get("messages")
        if turns is None:
            turns = [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"]},
            ]
            if not isinstance(record["prompt"], str):
                turns = [*record["prompt"], *record["completion"]]
        for i, turn in enumerate(turns):
            if turn["role"] not in FEW_SHOT_ROLES:
                raise DataError(
                    f"{path}:{number}: field 'messages[{i}].role' is {turn['role']!r}; few-shot "
                    "examples are earlier turns of the conversation, so only user and "
                    "assistant turns"
                )
        if turns[-1]["role"] != "assistant":
            raise DataError(
                f"{path}:{number}: the example ends with a {turns[-1]['role']} turn; end it "
                "with the assistant's revision"
            )
        messages += [{"role": t["role"], "content": t["content"]} for t in turns]
    return messages


@dataclass
class _Chain:
    """A batch of prompts through initial -> (critique -> revision) x N, one stage at a
    time over the whole batch, storing each stage's replies as they come."""

    store: LabelStore
    generator: Callable
    constitution: Constitution
    few_shot: list[dict]
    settings: CAISettings
    report: RunReport

    def steps(self, item: PromptItem) -> list[Step]:
        chain = [Step("initial")]
        for r in range(1, self.settings.revisions + 1):
            principle = self.constitution.principle_for(
                f"{item.key}/revision-{r}", self.settings.seed
            )
            chain.append(Step(f"critique-{r}", principle.critique, principle))
            chain.append(Step(f"revision-{r}", principle.revision, principle))
        return chain

    def run(self, batch: list[PromptItem]) -> None:
        stored = {item.key: self.store.stages(item.key) for item in batch}
        attempts = {item.key: self.store.item(item.key).attempts for item in batch}
        live = list(batch)
        for index in range(1 + 2 * self.settings.revisions):
            need = [item for item in live if self.steps(item)[index].name not in stored[item.key]]
            # a retried prompt samples with a shifted seed, so a reply that failed (e.g.
            # came out empty) is not drawn again exactly
            for attempt, group in groupby(
                sorted(need, key=lambda i: attempts[i.key]), key=lambda i: attempts[i.key]
            ):
                group = list(group)
                replies = self._generate(group, index, stored, self.settings.seed + attempt)
                if replies is None:
                    live = [item for item in live if item not in group]
                    continue
                entries = []
                for item, reply in zip(group, replies, strict=True):
                    name = self.steps(item)[index].name
                    if not reply.strip():
                        self._fail(item, f"empty {name.split('-')[0]}", f"empty reply at {name}")
                        live.remove(item)
                        continue
                    stored[item.key][name] = reply
                    entries.append((item.key, name, reply))
                self.store.put_stages(entries)
        for item in live:
            self._finish(item, stored[item.key])

    def conversation(self, item: PromptItem, index: int, stored: dict[str, str]) -> list[dict]:
        """The conversation the reply of step `index` continues: few-shot turns (after
        any leading system turns of the prompt), the prompt, and every earlier step as its
        request (a user turn) and its reply (an assistant turn)."""
        prompt = item.conversation
        lead = next((i for i, m in enumerate(prompt) if m["role"] != "system"), len(prompt))
        messages = [*prompt[:lead], *self.few_shot, *prompt[lead:]]
        for k, step in enumerate(self.steps(item)[: index + 1]):
            if step.request is not None:
                messages.append({"role": "user", "content": step.request})
            if k < index:
                messages.append({"role": "assistant", "content": stored[step.name]})
        return messages

    def _generate(self, group, index, stored, seed) -> list[str] | None:
        s = self.settings
        try:
            replies = self.generator().generate(
                [self.conversation(item, index, stored[item.key]) for item in group],
                n=1,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                seed=seed,
            )
        except AlignkitError as err:  # e.g. a model server that stayed down
            log.warning("generation failed for %d prompts: %s", len(group), err)
            for item in group:
                self._fail(item, f"model {getattr(err, 'reason', 'error')}", str(err))
            return None
        return [texts[0] for texts in replies]

    def _finish(self, item: PromptItem, stored: dict[str, str]) -> None:
        steps = self.steps(item)
        initial, final = stored["initial"], stored[steps[-1].name]
        principles = [step.principle.name for step in steps[2::2]]
        prompt = item.conversation
        result = {
            "sft": [{"messages": [*prompt, {"role": "assistant", "content": final}]}],
            "preference": [],
            "steps": [
                {
                    "prompt": item.record["prompt"],
                    "initial": initial,
                    "revisions": [
                        {
                            "principle": critique.principle.name,
                            "critique_request": critique.request,
                            "critique": stored[critique.name],
                            "revision_request": revision.request,
                            "revision": stored[revision.name],
                        }
                        for critique, revision in zip(steps[1::2], steps[2::2], strict=True)
                    ],
                    "final": final,
                }
            ],
        }
        if final.strip() != initial.strip():
            result["preference"].append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": final}],
                    "rejected": [{"role": "assistant", "content": initial}],
                    "principles": principles,
                }
            )
        else:
            self.report.notes["revisions identical to the initial response"] += 1
        if item.record.get("id") is not None:
            for records in result.values():
                for record in records:
                    record["id"] = item.record["id"]
        self.store.finish(item.key, result)
        self.report.done += 1

    def _fail(self, item: PromptItem, reason: str, detail: str) -> None:
        self.store.fail(item.key, detail)
        self.report.failed += 1
        self.report.reasons[reason] += 1


def _load_generator(spec, options: dict):
    from alignkit.feedback.generators import load_generator

    return load_generator(spec, **options)
