"""Start-up checks of a config, with errors that name the field and the values it accepts."""

from __future__ import annotations

from alexnet_jax import layers
from alexnet_jax import model as model_lib

_CHOICES = {
    "model.name": ("alexnet", "vgg16"),
    "model.variant": tuple(model_lib.ARCHITECTURES),
    "model.init_scheme": tuple(model_lib.INIT_SCHEMES),
    "model.activation": tuple(model_lib.ACTIVATIONS),
    "model.dtype": ("float32", "bfloat16"),
    "model.grouped_conv": ("auto",) + layers.GROUPED_CONV,
    "model.pool_gradient": ("auto",) + layers.POOL_GRADIENTS,
    "model.lrn_gradient": ("auto",) + layers.LRN_GRADIENTS,
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
    for field, choices in _CHOICES.items():
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
    lrn_n = config.model.get("lrn_n", 5)
    if lrn_n < 1 or lrn_n % 2 == 0:
        raise ConfigError(f"model.lrn_n={lrn_n} must be odd and positive: the window is centred on a channel")
    if not 0 <= config.model.dropout_rate < 1:
        raise ConfigError(f"model.dropout_rate={config.model.dropout_rate} must be in [0, 1)")
    if config.model.image_size > config.data.resize_size:
        raise ConfigError(
            f"model.image_size={config.model.image_size} is larger than data.resize_size={config.data.resize_size}: "
            "crops are cut from the resized image"
        )
    if config.model.name == "vgg16":
        if config.model.image_size % 32:
            raise ConfigError(f"model.image_size={config.model.image_size}: VGG-16 needs a multiple of 32")
        if config.parallel.model != 1:
            raise ConfigError("parallel.model must be 1 for VGG-16, which has no towers")
    elif config.model.image_size < 64:
        raise ConfigError(f"model.image_size={config.model.image_size} is below 64, the smallest that reaches pool5")
    if config.parallel.model == 2 and model_lib.ARCHITECTURES[config.model.variant].towers != 2:
        raise ConfigError(
            f"parallel.model=2 splits the paper's two towers; model.variant={config.model.variant!r} has one"
        )
    if config.parallel.model == 2 and config.model.num_classes % 2:
        raise ConfigError(
            f"parallel.model=2 splits fc8 in halves: model.num_classes={config.model.num_classes} must be even"
        )
