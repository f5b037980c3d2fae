"""What a rerun in a workdir may change: a rule for every config field, and the identity of the data.

A run resumed in its workdir compares its config with the config its checkpoint was written under,
field by field, and the data it reads with the data that checkpoint was trained on. Each field has
one of four rules:

    resumes  the new value takes effect from the resumed step on (the learning rate, the cadence of
             logs, evaluations and checkpoints, the mesh, the implementations...)
    data     the field names where the data comes from (a moved data_dir, a prepared copy): it takes
             effect when the data it names is the same data (class names in label order, number of
             examples, statistics), and the run refuses otherwise
    refuses  the field changes what the run is (the network's function, the recipe, the seed): the run
             stops with one line, unless the field is named in `train.allow_changes`, after which the
             new value takes effect from the resumed step on
    fixed    the meaning of a step depends on it (the batch size sets which images a step reads): the
             run stops, always; train it in a new workdir

`python -m alexnet_jax.resume` prints the table of every field's rule (docs/training.md holds it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

RESUMES, DATA, REFUSES, FIXED = "resumes", "data", "refuses", "fixed"
# `train.allow_changes` may name this pseudo-field to accept data that is not the same data.
DATA_IDENTITY = "data"


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: str
    why: str


_NETWORK = "the network computes another function from the same parameters"
_RECIPE = "the training recipe changes in the middle of the run"
RULES: dict[str, Rule] = {
    "seed": Rule(REFUSES, "the data order, every augmentation and every dropout mask derive from it"),
    "model.name": Rule(REFUSES, "another network: its parameters do not fit the checkpoint"),
    "model.variant": Rule(REFUSES, "another network: its parameters do not fit the checkpoint"),
    "model.num_classes": Rule(REFUSES, "fc8's shape changes"),
    "model.image_size": Rule(REFUSES, "the crops the network sees change size"),
    "model.lrn": Rule(REFUSES, _NETWORK),
    "model.lrn_k": Rule(REFUSES, _NETWORK),
    "model.lrn_n": Rule(REFUSES, _NETWORK),
    "model.lrn_alpha": Rule(REFUSES, _NETWORK),
    "model.lrn_beta": Rule(REFUSES, _NETWORK),
    "model.lrn_span": Rule(REFUSES, _NETWORK),
    "model.dropout_rate": Rule(REFUSES, _NETWORK),
    "model.dropout_scaling": Rule(REFUSES, "the layers after dropout were trained for the other scaling"),
    "model.fc_width": Rule(REFUSES, "fc6 and fc7 change shape"),
    "model.activation": Rule(REFUSES, _NETWORK),
    "model.pool_window": Rule(REFUSES, _NETWORK),
    "model.pool_stride": Rule(REFUSES, _NETWORK),
    "model.init_scheme": Rule(REFUSES, "the run was initialised with the old scheme; a resumed run cannot change that"),
    "model.init_bias": Rule(REFUSES, "the run was initialised with the old biases; a resumed run cannot change that"),
    "model.dtype": Rule(RESUMES, "the compute precision; the parameters stay float32"),
    "model.grouped_conv": Rule(RESUMES, "an implementation with the same numbers"),
    "model.pool_gradient": Rule(RESUMES, "an implementation with the same numbers"),
    "model.lrn_gradient": Rule(RESUMES, "an implementation with the same numbers"),
    "data.source": Rule(DATA, "where the data comes from"),
    "data.name": Rule(DATA, "where the data comes from"),
    "data.data_dir": Rule(DATA, "where the data comes from"),
    "data.train_split": Rule(DATA, "where the data comes from"),
    "data.eval_split": Rule(DATA, "where the data comes from"),
    "data.fake_train_size": Rule(DATA, "the made-up data's size"),
    "data.fake_eval_size": Rule(DATA, "the made-up data's size"),
    "data.fake_num_classes": Rule(DATA, "the made-up data's classes"),
    "data.resize_size": Rule(REFUSES, "the images and the mean image change size"),
    "data.random_crop": Rule(REFUSES, _RECIPE),
    "data.random_flip": Rule(REFUSES, _RECIPE),
    "data.pca_lighting_std": Rule(REFUSES, _RECIPE),
    "data.normalisation": Rule(REFUSES, "the network's input changes"),
    "data.classes": Rule(DATA, "which classes of the data the run trains on"),
    "optim.batch_size": Rule(FIXED, "a step's images and the epoch's length depend on it"),
    "optim.learning_rate": Rule(RESUMES, "the rate from the resumed step on; schedules continue from it (section 5)"),
    "optim.momentum": Rule(RESUMES, "the update rule's constant from the resumed step on"),
    "optim.weight_decay": Rule(RESUMES, "the update rule's constant from the resumed step on"),
    "optim.bias_lr_multiplier": Rule(RESUMES, "the update rule's constant from the resumed step on"),
    "optim.bias_weight_decay": Rule(RESUMES, "the update rule's constant from the resumed step on"),
    "schedule.kind": Rule(REFUSES, "another schedule would set a rate unrelated to the one the run reached"),
    "schedule.factor": Rule(RESUMES, "applies to the cuts still to come"),
    "schedule.patience": Rule(RESUMES, "applies to the evaluations still to come"),
    "schedule.min_delta": Rule(RESUMES, "applies to the evaluations still to come"),
    "schedule.max_cuts": Rule(RESUMES, "applies to the cuts still to come"),
    "schedule.step_epochs": Rule(RESUMES, "applies to the epochs still to come"),
    "train.num_epochs": Rule(RESUMES, "the run ends at the new length (a finished run trains on)"),
    "train.log_every_steps": Rule(RESUMES, "cadence"),
    "train.eval_every_epochs": Rule(RESUMES, "cadence (the plateau rule counts evaluations)"),
    "train.checkpoint_every_steps": Rule(RESUMES, "cadence"),
    "train.keep_checkpoints": Rule(RESUMES, "how many periodic checkpoints are kept from now on"),
    "train.init_from": Rule(
        REFUSES, "where the run's first parameters came from; a resumed run continues from its own"
    ),
    "train.reinit": Rule(REFUSES, "which layers the run started afresh; a resumed run continues from its own"),
    "train.freeze": Rule(RESUMES, "the layers held fixed from the resumed step on"),
    "train.allow_changes": Rule(RESUMES, "names the changes a rerun accepts"),
    "train.lock_workdir": Rule(RESUMES, "whether this run takes the workdir's lock"),
    "eval.batch_size": Rule(RESUMES, "evaluation gives the same numbers in any batch size"),
    "eval.ten_crop": Rule(RESUMES, "what the final evaluation reports"),
    "parallel.model": Rule(RESUMES, "a checkpoint restores onto any mesh"),
    "parallel.data": Rule(RESUMES, "a checkpoint restores onto any mesh"),
    "parallel.micro_batch": Rule(RESUMES, "the same sums, in other chunks"),
    "parallel.distributed": Rule(RESUMES, "a checkpoint restores onto any number of hosts"),
}


# Fields that say how a run is carried out, not what it computes: a finished run rerun with changes to
# these alone is the same finished run.
OPERATIONAL = {
    "model.dtype",
    "model.grouped_conv",
    "model.pool_gradient",
    "model.lrn_gradient",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.allow_changes",
    "train.lock_workdir",
    "eval.batch_size",
    "parallel.model",
    "parallel.data",
    "parallel.micro_batch",
    "parallel.distributed",
} | {field for field, rule in RULES.items() if rule.kind == DATA}


# Fields that change what an evaluation of a checkpoint computes: the network's function and its input.
# An evaluation under a config that changes none of them (another seed, recipe or schedule) is the
# checkpoint's own evaluation.
EVALUATED = {
    "model.name",
    "model.variant",
    "model.num_classes",
    "model.image_size",
    "model.lrn",
    "model.lrn_k",
    "model.lrn_n",
    "model.lrn_alpha",
    "model.lrn_beta",
    "model.lrn_span",
    "model.dropout_rate",
    "model.dropout_scaling",
    "model.fc_width",
    "model.activation",
    "model.pool_window",
    "model.pool_stride",
    "data.resize_size",
    "data.normalisation",
}


class ResumeRefused(ValueError):
    """A rerun would change what the workdir's run is; nothing was changed."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """`{"optim.learning_rate": 0.01, ...}` of a resolved config (lists for tuples)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def resolved(config) -> dict:
    """A config as the plain dict that config.json and checkpoint records hold."""
    return json.loads(config.to_json_best_effort())


def rule(field: str) -> Rule:
    """The rule of a dotted field; a field without one refuses (a new field is never ignored)."""
    return RULES.get(field, Rule(REFUSES, "no resume rule is written for this field"))


def allowed_changes(config) -> set[str]:
    """The fields named in `train.allow_changes` (comma-separated), checked to be fields."""
    text = str(config.train.get("allow_changes", "") or "")
    names = {name.strip() for name in text.split(",") if name.strip()}
    known = set(flatten(resolved(config))) | {DATA_IDENTITY}
    unknown = sorted(names - known)
    if unknown:
        raise ResumeRefused(f"train.allow_changes names {', '.join(unknown)}, which are not config fields")
    fixed = sorted(name for name in names if rule(name).kind == FIXED)
    if fixed:
        raise ResumeRefused(f"train.allow_changes cannot allow {', '.join(fixed)}: {rule(fixed[0]).why}")
    return names


@dataclasses.dataclass(frozen=True)
class Change:
    field: str
    old: object
    new: object

    def __str__(self) -> str:
        return f"{self.field}: {self.old!r} -> {self.new!r}"


def changes(old: dict, new: dict) -> list[Change]:
    """Every field whose value differs between two resolved configs."""
    before, after = flatten(old), flatten(new)
    return [
        Change(field, before.get(field, "(absent)"), after.get(field, "(absent)"))
        for field in sorted(before.keys() | after.keys())
        if before.get(field) != after.get(field)
    ]


def data_identity(data) -> dict:
    """What makes a dataset the same dataset for a run: its class names in label order, the number of
    examples of each split, and a digest of the statistics it is normalised with."""
    digest = hashlib.sha256()
    for array in (data.mean, data.pca_scale, data.pca_axes):
        digest.update(np.ascontiguousarray(np.asarray(array, np.float32)).tobytes())
    return {
        "class_names": list(data.class_names),
        "train_examples": int(data.train.size),
        "eval_examples": int(data.eval.size),
        "statistics": digest.hexdigest()[:16],
    }


def data_differences(old: dict, new: dict) -> list[str]:
    """How two data identities differ, in words; empty when they are the same data."""
    found = []
    old_names, new_names = old.get("class_names", []), new["class_names"]
    if old_names != new_names:
        if len(old_names) != len(new_names):
            found.append(f"{len(old_names)} classes before, {len(new_names)} now")
        else:
            label = next(i for i, (a, b) in enumerate(zip(old_names, new_names)) if a != b)
            found.append(f"class {label} was {old_names[label]!r} and is {new_names[label]!r} now")
    for key, what in (("train_examples", "training examples"), ("eval_examples", "evaluation examples")):
        if old.get(key) != new[key]:
            found.append(f"{old.get(key)} {what} before, {new[key]} now")
    if old.get("statistics") != new["statistics"]:
        found.append("other statistics (mean image or colour axes): stats.npz changed")
    return found


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a rerun does with its config changes: those that take effect, and those it refuses."""

    take_effect: list[Change]
    refused: list[str]  # one phrase per refused change, with what to do

    @property
    def effective(self) -> list[Change]:
        """The accepted changes that alter what the run computes (not only how it is carried out)."""
        return [change for change in self.take_effect if change.field not in OPERATIONAL]

    @property
    def learning_rate_changed(self) -> bool:
        return any(change.field == "optim.learning_rate" for change in self.take_effect)


def decide(old_config: dict, new_config, old_data: dict | None, new_data: dict, evaluating: bool = False) -> Decision:
    """Applies every field's rule to the changes between the checkpoint's config (`old_config`, a
    resolved dict) and this run's (`new_config`), and compares the data identities. `evaluating`: the
    checkpoint is only evaluated, and only the fields of EVALUATED (and the data) must agree."""
    allowed = allowed_changes(new_config)
    take_effect, refused = [], []
    for change in changes(old_config, resolved(new_config)):
        kind = rule(change.field).kind
        if evaluating:
            kind = REFUSES if change.field in EVALUATED else RESUMES
        if kind == FIXED:
            refused.append(f"{change} ({rule(change.field).why}; it cannot change in a workdir)")
        elif kind == REFUSES and change.field not in allowed:
            refused.append(
                f"{change} ({rule(change.field).why}; to accept it, add --config.train.allow_changes={change.field})"
            )
        else:
            take_effect.append(change)
    if old_data is not None and DATA_IDENTITY not in allowed:
        differences = data_differences(old_data, new_data)
        if differences:
            refused.append(
                f"the data differs from the data the run trained on: {'; '.join(differences)} "
                f"(to accept it, add --config.train.allow_changes={DATA_IDENTITY})"
            )
    return Decision(take_effect, refused)


def rules_markdown() -> str:
    """The table of every field's rule, as docs/training.md shows it."""
    lines = ["| field | on resume | why |", "|---|---|---|"]
    lines += [f"| `{field}` | {r.kind} | {r.why} |" for field, r in RULES.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(rules_markdown())
