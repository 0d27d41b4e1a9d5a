"""Constitutions: the shipped default, validation errors naming file / principle / field,
and the per-example principle choice (seeded, independent of processing order)."""

import random
import textwrap

import pytest

from alignkit.feedback.constitution import (
    ConstitutionError,
    Principle,
    load_constitution,
    parse_constitution,
)

GOOD = {
    "name": "kind",
    "critique": "Was it unkind?",
    "revision": "Make it kind.",
    "comparison": "Which is kinder?",
}


def write(tmp_path, text):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_default_constitution_ships_with_the_package():
    constitution = load_constitution()
    assert constitution.name == "default" and 8 <= len(constitution) <= 12
    names = [p.name for p in constitution.principles]
    assert len(set(names)) == len(names)
    for concern in ("avoid-harm", "truthfulness", "helpfulness"):
        assert concern in names
    for principle in constitution.principles:
        assert all(getattr(principle, f).strip() for f in ("critique", "revision", "comparison"))


def test_the_default_file_is_declared_as_package_data():
    """A wheel only carries the YAML if pyproject says so (not checked by importing from
    the checkout, so read the declaration)."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["alignkit.feedback"]
    assert "constitutions/*.yaml" in data


def test_a_bare_list_and_a_mapping_both_load(tmp_path):
    as_list = parse_constitution("- " + "\n  ".join(f"{k}: {v}" for k, v in GOOD.items()))
    assert as_list.principles == (Principle(**GOOD),)
    path = write(
        tmp_path,
        """\
        name: mine
        principles:
          - name: kind
            critique: Was it unkind?
            revision: Make it kind.
            comparison: Which is kinder?
        """,
    )
    assert load_constitution(path).name == "mine"
    assert load_constitution(path).source == str(path)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            """\
            principles:
              - name: kind
                critique: Was it unkind?
                revision: Make it kind.
                comparison: Which is kinder?
              - name: honest
                critique: Was it false?
                comparison: Which is truer?
            """,
            "principle 2 ('honest'): field 'revision' is missing",
        ),
        (
            """\
            principles:
              - critique: Was it unkind?
                revision: Make it kind.
                comparison: Which is kinder?
            """,
            "principle 1: field 'name' is missing",
        ),
        (
            """\
            principles:
              - name: kind
                critique: Was it unkind?
                revison: Make it kind.
                comparison: Which is kinder?
            """,
            "principle 1 ('kind'): unknown field 'revison'; did you mean 'revision'?",
        ),
        (
            """\
            principles:
              - name: kind
                critique: "  "
                revision: Make it kind.
                comparison: Which is kinder?
            """,
            "principle 1 ('kind'): field 'critique' is empty",
        ),
        (
            """\
            principles:
              - name: kind
                critique: [a, b]
                revision: Make it kind.
                comparison: Which is kinder?
            """,
            "principle 1 ('kind'): field 'critique' must be text, got a list",
        ),
        ("principles:\n  - just a sentence\n", "principle 1: expected a mapping"),
        ("principles: []\n", "the list of principles is empty"),
        ("rules: []\n", "unknown top-level key 'rules'"),
        ("principles:\n  - name: [unclosed\n", ": not valid YAML"),
    ],
)
def test_invalid_constitutions_name_file_principle_and_field(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(ConstitutionError) as caught:
        load_constitution(path)
    assert str(caught.value).startswith(f"{path}")
    assert message in str(caught.value)


def test_duplicate_names_are_refused(tmp_path):
    path = write(tmp_path, "- " + "\n  ".join(f"{k}: {v}" for k, v in GOOD.items()) + "\n" + (
        "- " + "\n  ".join(f"{k}: {v}" for k, v in GOOD.items())
    ))  # fmt: skip
    with pytest.raises(
        ConstitutionError, match="principle 2 has the same name 'kind' as principle 1"
    ):
        load_constitution(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConstitutionError, match="no such constitution file"):
        load_constitution(tmp_path / "nope.yaml")


def test_principle_choice_is_seeded_and_order_independent():
    constitution = load_constitution()
    keys = [f"item-{i}" for i in range(200)]
    forward = {k: constitution.principle_for(k, seed=7) for k in keys}
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    # Processing order (and anything drawn in between) must not change an item's choice.
    for key in shuffled:
        random.random()
        assert constitution.principle_for(key, seed=7) == forward[key]
    # Another seed changes the assignment, and every principle gets used.
    other = {k: constitution.principle_for(k, seed=8) for k in keys}
    assert other != forward
    assert {p.name for p in forward.values()} == {p.name for p in constitution.principles}


def test_principle_choice_is_stable_across_processes():
    """Python salts str hashes per process; the choice must not depend on that."""
    import subprocess
    import sys

    code = (
        "from alignkit.feedback.constitution import load_constitution as l;"
        "c = l(); print(','.join(c.principle_for(f'k{i}', 3).name for i in range(20)))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1


def test_sample_uses_the_given_rng():
    constitution = load_constitution()
    draws = [constitution.sample(random.Random(5)).name for _ in range(3)]
    assert len(set(draws)) == 1
    assert constitution.fingerprint() == load_constitution().fingerprint()
