"""Every config field's resume rule: written for each field of the paper's config, applied as written,
and shown in docs/training.md exactly as the code holds it."""

import copy
import os

import pytest

from alexnet_jax import resume
from configs import paper
from tests.helpers import ROOT


def changed_value(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:  # a placeholder left unset (model.init_bias: each layer's paper value)
        return 0.5
    if isinstance(value, list):
        return value + [value[-1] + 1 if value else 1]
    raise AssertionError(f"no other value for {value!r}")


def with_change(config, field: str, value):
    group, _, name = field.rpartition(".")
    node = config
    for part in group.split(".") if group else []:
        node = node[part]
    node[name] = tuple(value) if isinstance(value, list) else value
    return config


IDENTITY = {"class_names": ["a", "b"], "train_examples": 10, "eval_examples": 4, "statistics": "0123"}


def test_every_field_of_the_papers_config_has_a_rule_and_no_rule_names_a_missing_field():
    fields = set(resume.flatten(resume.resolved(paper.get_config())))
    assert fields - resume.RULES.keys() == set(), "fields without a resume rule"
    assert resume.RULES.keys() - fields == set(), "rules of fields that do not exist"
    assert {rule.kind for rule in resume.RULES.values()} == {resume.RESUMES, resume.DATA, resume.REFUSES, resume.FIXED}


@pytest.mark.parametrize("field", sorted(resume.flatten(resume.resolved(paper.get_config()))))
def test_each_fields_change_is_decided_by_its_rule(field):
    """Each leaf of configs/paper.py changed alone: it takes effect, or it is refused with the field, both
    values and what to do; `train.allow_changes` accepts what `refuses` refuses, never what is fixed."""
    old = resume.resolved(paper.get_config())
    value = changed_value(resume.flatten(old)[field])
    if field == "train.allow_changes":
        value = "seed"  # must name a field
    new = with_change(paper.get_config(), field, value)
    decision = resume.decide(old, new, IDENTITY, IDENTITY)
    kind = resume.RULES[field].kind
    if kind in (resume.RESUMES, resume.DATA):
        assert [change.field for change in decision.take_effect] == [field] and not decision.refused
    else:
        assert decision.take_effect == [] and len(decision.refused) == 1
        assert decision.refused[0].startswith(f"{field}: ") and "->" in decision.refused[0]
        allowing = with_change(copy.deepcopy(new), "train.allow_changes", field)
        if kind == resume.REFUSES:
            assert "--config.train.allow_changes=" + field in decision.refused[0]
            accepted = resume.decide(old, allowing, IDENTITY, IDENTITY)
            assert field in [change.field for change in accepted.take_effect] and not accepted.refused
        else:
            with pytest.raises(resume.ResumeRefused, match=f"cannot allow {field}"):
                resume.decide(old, allowing, IDENTITY, IDENTITY)


def test_other_data_is_refused_unless_allowed_and_says_what_differs():
    config = paper.get_config()
    old = resume.resolved(config)
    renamed = {**IDENTITY, "class_names": ["a", "c"]}
    assert resume.decide(old, config, IDENTITY, renamed).refused == [
        "the data differs from the data the run trained on: class 1 was 'b' and is 'c' now "
        "(to accept it, add --config.train.allow_changes=data)"
    ]
    more = {**IDENTITY, "train_examples": 11, "statistics": "4567"}
    (refused,) = resume.decide(old, config, IDENTITY, more).refused
    assert "10 training examples before, 11 now" in refused and "stats.npz changed" in refused
    config.train.allow_changes = "data"
    assert resume.decide(old, config, IDENTITY, renamed).refused == []


def test_allow_changes_must_name_fields():
    config = paper.get_config()
    config.train.allow_changes = "optim.learning_rat"
    with pytest.raises(resume.ResumeRefused, match="optim.learning_rat, which are not config fields"):
        resume.allowed_changes(config)


def test_docs_show_the_rules_the_code_applies():
    text = open(os.path.join(ROOT, "docs", "training.md")).read()
    assert resume.rules_markdown() in text, "regenerate the table: python -m alexnet_jax.resume"
