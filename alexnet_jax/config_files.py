"""The config files the project ships (`configs/*.py`), found wherever the package is, and older
resolved configs brought up to date.

The `configs/` folder stays at the top of the repository (`--config=configs/paper.py` from a
clone). `pip install .` copies it into the package as `alexnet_jax/configs/` (pyproject.toml), so
that an installed package finds `paper.py` and the presets for imported weights
(`torchvision.py`, `caffe.py`) too, without putting a top-level `configs` package on anyone's path.
Config files load one another by path (`sibling`), never by `import configs`.
"""

from __future__ import annotations

import copy
import os
import runpy
from typing import Any

import ml_collections

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def configs_dir() -> str:
    """The shipped configs: `alexnet_jax/configs/` in an installed package, else the repository's `configs/`."""
    for candidate in (os.path.join(_PACKAGE, "configs"), os.path.join(os.path.dirname(_PACKAGE), "configs")):
        if os.path.isfile(os.path.join(candidate, "paper.py")):
            return candidate
    raise FileNotFoundError(f"the shipped configs (paper.py) are neither in {_PACKAGE}/configs nor beside the package")


def sibling(config_file: str, name: str) -> dict[str, Any]:
    """The globals of config file `name`.py in the folder of `config_file` (a config's `__file__`)."""
    return runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def shipped(name: str, argument: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` (or `get_config(argument)`) of the shipped config `name` (paper, default, torchvision...)."""
    module = runpy.run_path(os.path.join(configs_dir(), f"{name}.py"))
    return module["get_config"](argument) if argument is not None else module["get_config"]()


# What a field meant before it existed, for configs saved by earlier versions (a workdir's
# config.json, a weights file's config): every earlier run trained with inverted dropout, LRN
# windows inside each tower, and either the mean image or nothing subtracted (`data.subtract_mean`).
LEGACY_DEFAULTS = {
    "model.dropout_scaling": "inverted",
    "model.lrn_span": "tower",
    "data.classes": "",
    "train.init_from": "",
    "train.reinit": "",
    "train.freeze": "",
}


def upgrade(saved: dict) -> ml_collections.ConfigDict:
    """A resolved config saved by any version (a dict, as config.json holds it) in today's terms.

    Fields it lacks take the value they implicitly had then (LEGACY_DEFAULTS; `data.subtract_mean`
    becomes `data.normalisation`), and any other missing field today's default from configs/paper.py,
    so that every tool can read every field.
    """
    saved = copy.deepcopy(saved)
    data = saved.setdefault("data", {})
    if "normalisation" not in data:
        data["normalisation"] = "mean_image" if data.get("subtract_mean", True) else "none"
    data.pop("subtract_mean", None)
    for dotted, value in LEGACY_DEFAULTS.items():
        group, field = dotted.split(".")
        saved.setdefault(group, {}).setdefault(field, value)
    merged = shipped("paper").to_dict()
    _merge(merged, saved)
    return ml_collections.ConfigDict(merged)


def _merge(into: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = tuple(value) if isinstance(into.get(key), tuple) and isinstance(value, list) else value
