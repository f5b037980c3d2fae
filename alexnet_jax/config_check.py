"""Start-up checks of a config, with errors that name the field and the values it accepts."""

from __future__ import annotations

from alexnet_jax import networks

_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    **networks.IMPLEMENTATION_FIELDS,
    "data.source": ("tfds", "folder", "digits", "fake"),
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
)
_NON_NEGATIVE = ("optim.momentum", "optim.weight_decay", "data.pca_lighting_std", "model.dropout_rate")


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
    for field in _POSITIVE:
        if not _get(config, field) > 0:
            raise ConfigError(f"{field}={_get(config, field)!r} must be positive")
    for field in _NON_NEGATIVE:
        if _get(config, field) < 0:
            raise ConfigError(f"{field}={_get(config, field)!r} must not be negative")
    if config.parallel.get("micro_batch", -1) < -1:
        raise ConfigError(
            f"parallel.micro_batch={config.parallel.micro_batch} must be -1 (automatic), 0 (whole batch) or positive"
        )
    if not 0 <= config.model.dropout_rate < 1:
        raise ConfigError(f"model.dropout_rate={config.model.dropout_rate} must be in [0, 1)")
    if config.model.image_size > config.data.resize_size:
        raise ConfigError(
            f"model.image_size={config.model.image_size} is larger than data.resize_size={config.data.resize_size}: "
            "crops are cut from the resized image"
        )
    try:
        network.check(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
