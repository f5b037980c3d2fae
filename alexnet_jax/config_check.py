"""Start-up checks of a config, with errors that name the field and the values it accepts.

Numbers that cannot train are refused here, before anything is read or written: a value that is
not finite (in float32, as the device holds it), a negative or absurd learning rate, a momentum
outside [0, 1).
"""

from __future__ import annotations

import math

import numpy as np

from alexnet_jax import networks, resume, statistics

_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    **networks.IMPLEMENTATION_FIELDS,
    "data.source": ("tfds", "folder", "records", "digits", "fake"),
    "data.normalisation": statistics.NORMALISATIONS,
    "schedule.kind": ("plateau", "step", "cosine", "constant"),
    "parallel.model": (1, 2),
}
_POSITIVE = (
    "model.num_classes",
    "optim.batch_size",
    "optim.learning_rate",
    "eval.batch_size",
    "train.num_epochs",
    "train.keep_checkpoints",
    "train.eval_every_epochs",
    "model.pool_window",
    "model.fc_width",
    "model.pool_stride",
    "model.lrn_k",  # LRN divides by (k + alpha * sum)^beta: k > 0 keeps that away from 0
)
_NON_NEGATIVE = (
    "optim.momentum",
    "optim.weight_decay",
    "data.pca_lighting_std",
    "model.dropout_rate",
    "schedule.min_delta",
    "schedule.max_cuts",
    "model.lrn_alpha",
    "model.lrn_beta",
    "optim.bias_lr_multiplier",  # a negative one would climb the loss along the biases
)
# Half-open ranges [low, high) of fields whose meaning bounds them.
_RANGES = {
    "optim.momentum": (0.0, 1.0, "a momentum of 1 or more never forgets a gradient and diverges"),
    "model.dropout_rate": (0.0, 1.0, "a rate of 1 drops every neuron"),
    "optim.weight_decay": (0.0, 1.0, "a decay of 1 or more per unit rate wipes the weights out"),
    # SGD with momentum on this network diverges at once far below 10 (the paper: 0.01); a larger
    # rate is a typo (1e-2 typed as 1e2) rather than a choice.
    "optim.learning_rate": (0.0, 10.0, "a rate of 10 or more diverges at the first step"),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def check(config) -> None:
    """Raises ConfigError on the first field that cannot work."""
    try:
        network = networks.entry(config.model.name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for field, choices in {**_CHOICES, **network.fields}.items():
        if _get(config, field) not in choices:
            raise ConfigError(f"{field}={_get(config, field)!r} is not one of {', '.join(map(repr, choices))}")
    for field, value in resume.flatten(resume.resolved(config)).items():
        numbers = value if isinstance(value, list) else [value]
        for number in numbers:
            if isinstance(number, float) and not (math.isfinite(number) and abs(number) <= _FLOAT32_MAX):
                raise ConfigError(f"{field}={value!r} is not a finite number (in float32, as the device holds it)")
    for field in _POSITIVE:
        if not _get(config, field) > 0:
            raise ConfigError(f"{field}={_get(config, field)!r} must be positive")
    for field in _NON_NEGATIVE:
        if _get(config, field) < 0:
            raise ConfigError(f"{field}={_get(config, field)!r} must not be negative")
    for field, (low, high, why) in _RANGES.items():
        if not low <= _get(config, field) < high:
            raise ConfigError(f"{field}={_get(config, field)!r} must be in [{low:g}, {high:g}): {why}")
    if not 0 < config.schedule.factor <= 1:
        raise ConfigError(f"schedule.factor={config.schedule.factor!r} must be in (0, 1]: a cut lowers the rate")
    if config.schedule.patience < 1:
        raise ConfigError(f"schedule.patience={config.schedule.patience!r} must be at least 1 evaluation")
    try:
        resume.allowed_changes(config)
    except resume.ResumeRefused as error:
        raise ConfigError(str(error)) from None
    if config.parallel.get("micro_batch", -1) < -1:
        raise ConfigError(
            f"parallel.micro_batch={config.parallel.micro_batch} must be -1 (automatic), 0 (whole batch) or positive"
        )
    if config.model.image_size > config.data.resize_size:
        raise ConfigError(
            f"model.image_size={config.model.image_size} is larger than data.resize_size={config.data.resize_size}: "
            "crops are cut from the resized image"
        )
    try:
        network.check(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
