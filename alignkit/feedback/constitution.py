"""A constitution: the short list of written principles that AI feedback is steered by.

Constitutional AI (Bai et al. 2022) replaces human harmlessness labels with a handful of
principles written in plain language. Each principle is used in three ways:

- `critique`: a request, put to the model after it has answered, to point out what is
  wrong with its answer (SL-CAI, Bai et al. 2022 section 3.1);
- `revision`: a request, put after the critique, to rewrite the answer accordingly;
- `comparison`: a question put to a judge shown two answers, "which one is better in this
  respect?" (the RL-CAI / RLAIF preference step, Bai et al. 2022 section 4.1; Lee et al.
  2023).

The paper samples one principle per example rather than asking about all of them at once,
so that over a data set every principle gets used while each judgement stays focused. The
choice here is a pure function of (seed, item key): a resumed or reordered run picks the
same principle for the same example.

A constitution file is YAML:

    name: my-rules          # optional
    principles:
      - name: honesty
        critique: "..."
        revision: "..."
        comparison: "..."

(a bare list of principles is accepted too). `load_constitution(None)` loads the one
shipped with alignkit (`alignkit/feedback/constitutions/default.yaml`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from alignkit.errors import AlignkitError

FIELDS = ("name", "critique", "revision", "comparison")
DEFAULT = "default.yaml"


class ConstitutionError(AlignkitError):
    """A constitution file that cannot be used; the message names the file, the principle
    (1-based, as a person counts the list) and the field."""


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str
    comparison: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    name: str = "constitution"
    source: str = ""

    def sample(self, rng: random.Random) -> Principle:
        """One principle, drawn uniformly with `rng`."""
        return self.principles[rng.randrange(len(self.principles))]

    def principle_for(self, item_key: str, seed: int) -> Principle:
        """The principle for one example: depends only on `seed` and `item_key`, never on
        which examples were processed before it (so resuming picks the same one)."""
        return self.sample(item_rng(item_key, seed))

    def fingerprint(self) -> str:
        """A digest of the principles' text: two constitutions with the same principles
        steer feedback the same way wherever their files live."""
        canonical = json.dumps([asdict(p) for p in self.principles], sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.principles)


def item_rng(item_key: str, seed: int) -> random.Random:
    """A random stream private to one (seed, item): seeded from a hash of both, because
    Python's built-in `hash` of a string changes from process to process."""
    digest = hashlib.sha256(f"{seed}\0{item_key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Read and validate a constitution file; `None` gives the default one."""
    if path is None:
        source = resources.files("alignkit.feedback").joinpath("constitutions", DEFAULT)
        return parse_constitution(source.read_text(encoding="utf-8"), f"<alignkit>/{DEFAULT}")
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"{path}: no such constitution file")
    return parse_constitution(path.read_text(encoding="utf-8"), str(path))


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConstitutionError(f"{source}{where}: not valid YAML ({problem})") from None
    name = Path(source).stem
    if isinstance(document, dict):
        unknown = set(document) - {"name", "description", "principles"}
        if unknown:
            raise ConstitutionError(
                f"{source}: unknown top-level key {sorted(unknown)[0]!r} "
                "(expected 'principles', and optionally 'name' and 'description')"
            )
        name = str(document.get("name") or name)
        document = document.get("principles")
    if document == []:
        raise ConstitutionError(f"{source}: the list of principles is empty")
    if not isinstance(document, list):
        raise ConstitutionError(
            f"{source}: expected a list of principles under 'principles', got {_kind(document)}"
        )
    principles = tuple(_principle(entry, i, source) for i, entry in enumerate(document, 1))
    seen: dict[str, int] = {}
    for i, principle in enumerate(principles, 1):
        if principle.name in seen:
            raise ConstitutionError(
                f"{source}: principle {i} has the same name {principle.name!r} as "
                f"principle {seen[principle.name]}; names identify principles in the output"
            )
        seen[principle.name] = i
    return Constitution(principles, name=name, source=source)


def _principle(entry, index: int, source: str) -> Principle:
    where = f"{source}: principle {index}"
    if not isinstance(entry, dict):
        raise ConstitutionError(
            f"{where}: expected a mapping with {', '.join(FIELDS)}, got {_kind(entry)}"
        )
    if isinstance(entry.get("name"), str) and entry["name"].strip():
        where += f" ({entry['name'].strip()!r})"
    for key in entry:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (expected {', '.join(FIELDS)})"
            raise ConstitutionError(f"{where}: unknown field {key!r}{hint}")
    values = {}
    for field in FIELDS:
        value = entry.get(field)
        if value is None:
            raise ConstitutionError(f"{where}: field {field!r} is missing")
        if not isinstance(value, str):
            raise ConstitutionError(f"{where}: field {field!r} must be text, got {_kind(value)}")
        if not value.strip():
            raise ConstitutionError(f"{where}: field {field!r} is empty")
        values[field] = value.strip()
    return Principle(**values)


def _kind(value) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)
