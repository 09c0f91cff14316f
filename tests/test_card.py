"""The card (README.md): lineage front matter written and read back, read by huggingface_hub's own ModelCard,
and every malformed card refused with CardError (never another exception)."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fiun_hub.card import CardMeta, ParentRef, card_body, meta_from_dict, meta_to_dict, parse_card, render_card
from fiun_hub.errors import CardError

A = "a" * 40
B = "b" * 40


def front(text: str) -> dict:
    """The YAML front matter of a rendered card, parsed by plain PyYAML."""
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_single_parent_card_round_trips():
    meta = CardMeta(parents=[ParentRef("org/base", A)], relation="finetune", labels=["cat", "dog"],
                    fim={"file": "fim.safetensors", "layers": ["fc.weight"]})
    text = render_card(meta, repo="org/child")
    data = front(text)
    assert data["library_name"] == "timm"
    assert "fiun-hub" in data["tags"]
    assert data["base_model"] == "org/base"  # one parent: a plain id, as on the Hugging Face Hub
    assert data["base_model_relation"] == "finetune"
    assert data["fiun"]["parents"] == [{"repo": "org/base", "revision": A}]
    assert data["fiun"]["labels"] == ["cat", "dog"]
    back = parse_card(text)
    assert back.parents == meta.parents and back.relation == "finetune"
    assert back.labels == ["cat", "dog"] and back.fim == meta.fim and back.base_model == ["org/base"]
    assert "# org/child" in card_body(text)


def test_several_parents_give_a_list_and_merge_by_default():
    meta = CardMeta(parents=[ParentRef("org/a", A), ParentRef("org/b", B)], labels=["x"])
    data = front(render_card(meta))
    assert data["base_model"] == ["org/a", "org/b"]
    assert data["base_model_relation"] == "merge"
    assert [p["revision"] for p in data["fiun"]["parents"]] == [A, B]
    one = front(render_card(CardMeta(parents=[ParentRef("org/a", A)])))
    assert one["base_model_relation"] == "finetune"  # set even when nobody said which


def test_root_card_has_no_base_model_and_parses():
    text = render_card(CardMeta(labels=["x", "y"]), body="\n# Root\n\nhello\n")
    data = front(text)
    assert "base_model" not in data and data["fiun"]["parents"] == []
    meta = parse_card(text)
    assert meta.parents == [] and meta.labels == ["x", "y"]
    assert card_body(text).strip() == "# Root\n\nhello"


def test_huggingface_modelcard_reads_our_lineage():
    from huggingface_hub import ModelCard

    text = render_card(CardMeta(parents=[ParentRef("org/a", A), ParentRef("org/b", B)], relation="adapter",
                                labels=["x"]))
    card = ModelCard(text)
    assert card.data.base_model == ["org/a", "org/b"]
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "timm"
    assert card.data.to_dict()["fiun"]["parents"][1] == {"repo": "org/b", "revision": B}


def test_unlearned_records_and_extra_keys_survive():
    unlearned = [{"request": "TKD-1", "classes": ["dog"], "origins": [f"org/a@{A}"], "from_revision": A,
                  "alpha": 1.0, "lambda": 1.0, "at": "2026-11-22T10:00:00Z"}]
    meta = CardMeta(parents=[ParentRef("org/a", A)], relation="finetune", labels=["cat"], unlearned=unlearned,
                    extra={"license": "apache-2.0", "tags": ["vision"], "fiun": {"note": "kept"}})
    back = parse_card(render_card(meta))
    assert back.unlearned == unlearned  # the timestamp stays the string it was
    assert back.extra["license"] == "apache-2.0"
    assert back.extra["tags"] == ["vision", "fiun-hub"]
    assert back.extra["fiun"] == {"note": "kept"}
    assert meta_to_dict(back)["tags"] == ["vision", "fiun-hub"]  # the tag is not added twice


def test_base_model_alone_is_an_unpinned_parent():
    meta = parse_card("---\nbase_model: [org/a, org/b]\nbase_model_relation: merge\n"
                      f"fiun: {{parents: [{{repo: org/a, revision: '{A}'}}]}}\n---\n")
    assert meta.parents == [ParentRef("org/a", A), ParentRef("org/b", "")]
    assert parse_card("no front matter at all\n") == CardMeta()
    assert parse_card(b"---\nlicense: mit\n---\n").extra == {"license": "mit"}


@pytest.mark.parametrize("text", [
    "---\nbase_model: [unclosed\n---\n",  # malformed YAML
    "---\n: : :\n  - x\n bad: indent\n---\n",
    "---\n- a list\n- not a mapping\n---\n",
    "---\nbase_model_relation: distill\n---\n",
    "---\nbase_model: ../etc\n---\n",
    "---\nbase_model: [org/a/b]\n---\n",
    "---\nfiun: [1, 2]\n---\n",
    "---\nfiun: {parents: {repo: org/a}}\n---\n",
    "---\nfiun: {parents: [org/a]}\n---\n",
    "---\nfiun: {parents: [{repo: org/a, revision: main}]}\n---\n",
    f"---\nfiun: {{parents: [{{repo: '/abs/x', revision: '{A}'}}]}}\n---\n",
    f"---\nfiun: {{parents: [{{repo: org/a, revision: '{A.upper()}'}}]}}\n---\n",
    "---\nfiun: {labels: [x, x]}\n---\n",
    "---\nfiun: {labels: {a: 1}}\n---\n",
    "---\nfiun: {labels: [[nested]]}\n---\n",
    "---\nfiun: {fim: [not, a, mapping]}\n---\n",
    "---\nfiun: {unlearned: [{classes: [x]}]}\n---\n",
    "---\nfiun: {unlearned: oops}\n---\n",
    "---\nx: " + "[" * 600 + "]" * 600 + "\n---\n",  # nested beyond reason
], ids=lambda t: t[4:30])
def test_malformed_cards_raise_card_error(text):
    with pytest.raises(CardError):
        parse_card(text, where="org/x")


def test_card_size_and_encoding_limits():
    with pytest.raises(CardError, match="UTF-8"):
        parse_card(b"---\nlicense: \xff\xfe\n---\n")
    with pytest.raises(CardError, match="bytes"):
        parse_card(b"---\nlicense: mit\n---\n" + b"x" * (1 << 20))
    with pytest.raises(CardError):
        meta_from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


def test_error_message_names_the_card():
    with pytest.raises(CardError, match=r"^org/x@abc: "):
        parse_card("---\nbase_model_relation: distill\n---\n", where="org/x@abc")


# ---------------------------------------------------------------------------- property-based
YAMLISH = st.text(alphabet="abfiunparentslabels:-[]{},'\"\n #!&*|>?%@`0123456789./", max_size=120)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
@example("fiun:\n  parents:\n  - {repo: a/b, revision: x}\n")
@example("base_model: [1, '1']\n")
@example("!!binary aGVsbG8=\n")
@example("? [a]\n: b\n")
def test_parse_card_of_random_yamlish_text_returns_meta_or_card_error(body):
    text = f"---\n{body}\n---\nbody\n"
    try:
        meta = parse_card(text)
    except CardError:
        return
    assert isinstance(meta, CardMeta)


_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
            | st.sampled_from(["org/a", "a/b", A, "finetune", "merge", "..", "main"])
            | st.dates() | st.datetimes())
_VALUES = st.recursive(_SCALARS, lambda kids: st.lists(kids, max_size=3)
                       | st.dictionaries(st.sampled_from(["repo", "revision", "request", "x", "classes"]), kids,
                                         max_size=3), max_leaves=12)
_FIUN = st.fixed_dictionaries({}, optional={"parents": _VALUES, "labels": _VALUES, "fim": _VALUES,
                                            "unlearned": _VALUES, "other": _VALUES})
_FRONT = st.fixed_dictionaries({}, optional={"base_model": _VALUES, "base_model_relation": _VALUES,
                                             "fiun": _FIUN | _VALUES, "tags": _VALUES, "license": _VALUES})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FRONT)
def test_parse_card_of_random_structured_front_matter_returns_meta_or_card_error(data):
    text = "---\n" + yaml.safe_dump(data, default_flow_style=None) + "---\n"
    try:
        meta = parse_card(text)
    except CardError:
        return
    assert isinstance(meta, CardMeta)
    assert all(isinstance(p.repo, str) and isinstance(p.revision, str) for p in meta.parents)
    assert all(isinstance(label, str) for label in meta.labels)


def test_unquoted_yaml_timestamps_in_records_are_plain_data():
    """A card written by hand or another tool may carry ``at: 2026-11-22T10:00:00Z`` unquoted: YAML makes it a
    datetime. What parse_card returns goes into the JSON lineage index, so it must be JSON data (a string) or
    be refused with CardError.

    BUG (fiun_hub/card.py, meta_from_dict): ``unlearned`` records are passed through as YAML gave them, so they
    may hold datetime/date (or bytes, set) objects; fiun_hub/lineage.py write_index_file then fails with a
    TypeError inside LocalHub.publish (see tests/test_lineage.py::test_a_card_with_a_yaml_timestamp...).
    """
    text = f"---\nfiun:\n  unlearned:\n  - {{request: R1, from_revision: '{A}', at: 2026-11-22T10:00:00Z}}\n---\n"
    try:
        meta = parse_card(text)
    except CardError:
        return  # refusing it is fine too
    at = meta.unlearned[0]["at"]
    assert not isinstance(at, (dt.date, dt.datetime)), f"parse_card returned a {type(at).__name__}"
    json.dumps(meta.unlearned)
