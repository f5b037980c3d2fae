"""The paper's design choices as experiments: each preset changes exactly one thing from the recipe.

    python -m alexnet_jax.main --config=configs/ablations.py:no_lrn --workdir=runs/no_lrn
    python launch/sweep.py ablations --root=runs/ablations --seeds=3     # all of them, several seeds

`configs/ablations.py:NAME` is configs/paper.py with ablation NAME applied; `NAME,BASE` applies it to
another base config instead (`default`: the embedded digits, `smoke`: made-up data), as the
demonstration run in docs/ablations.md does. `baseline` changes nothing. The ten-crop comparison
of section 4.1 needs no run of its own: every run reports both its centre-crop and 10-crop errors.
"""

import dataclasses
from collections.abc import Callable

from alexnet_jax.config_files import sibling


@dataclasses.dataclass(frozen=True)
class Ablation:
    section: str
    change: str  # what the preset changes, in words
    claim: str  # the paper's measured effect of the choice it removes
    apply: Callable
    # The paper's numbers where it gives them: how much worse (percentage points) the ablation's
    # top-1 and top-5 errors are than the baseline's.
    paper_top1: float | None = None
    paper_top5: float | None = None


def _set(**fields):
    def apply(config):
        for dotted, value in fields.items():
            group, name = dotted.split("__")
            config[group][name] = value

    return apply


# The tanh network's own learning rate, chosen on the digits (docs/ablations.md, "tanh's learning rate").
TANH_RATE = 0.01

ABLATIONS = {
    "tanh": Ablation(
        "3.1",
        "tanh instead of ReLU",
        "ReLU reached 25 % training error 6x faster (CIFAR-10, a four-layer net)",
        # Section 3.1 gave each network "the learning rate ... chosen independently to make training as
        # fast as possible"; section 5 set biases of 1 "to provide the ReLUs with positive inputs".
        # tanh gets zero biases (where a tanh unit is steepest and its outputs are centred) and the
        # rate of a sweep for the fastest descent to 25 % training error (docs/ablations.md).
        _set(model__activation="tanh", model__init_bias=0.0, optim__learning_rate=TANH_RATE),
    ),
    "one_tower": Ablation(
        "3.2",
        "one tower, half the kernels in conv1-conv4",
        "two towers: top-1 / top-5 error 1.7 / 1.2 points lower",
        _set(model__variant="one_tower", parallel__model=1),
        1.7,
        1.2,
    ),
    "no_lrn": Ablation(
        "3.3",
        "no local response normalisation",
        "LRN: top-1 / top-5 error 1.4 / 1.2 points lower",
        _set(model__lrn=False),
        1.4,
        1.2,
    ),
    "plain_pooling": Ablation(
        "3.4",
        "non-overlapping pooling, z = s = 2",
        "overlapping pooling: top-1 / top-5 error 0.4 / 0.3 points lower",
        _set(model__pool_window=2, model__pool_stride=2),
        0.4,
        0.3,
    ),
    "no_pca_lighting": Ablation(
        "4.1",
        "no PCA colour lighting",
        "PCA lighting: top-1 error over 1 point lower",
        _set(data__pca_lighting_std=0.0),
        1.0,
        None,
    ),
    "no_dropout": Ablation(
        "4.2",
        "no dropout",
        "without dropout, substantial overfitting; with it, about twice the iterations to converge",
        _set(model__dropout_rate=0.0),
    ),
}

BASES = {name: sibling(__file__, name)["get_config"] for name in ("paper", "default", "smoke")}


def get_config(spec: str = "baseline"):
    """`NAME` or `NAME,BASE`: the base config (paper's by default) with ablation NAME applied."""
    name, _, base = spec.partition(",")
    if name != "baseline" and name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; one of: baseline, {', '.join(ABLATIONS)}")
    if (base or "paper") not in BASES:
        raise ValueError(f"unknown base config {base!r}; one of: {', '.join(BASES)}")
    config = BASES[base or "paper"]()
    if name != "baseline":
        ABLATIONS[name].apply(config)
    return config
