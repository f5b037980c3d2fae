"""The configs: configs/paper.py cites the paper's section of every hyper-parameter of the paper, and
the embedded default changes from it only what scikit-learn's 1,797 digits need, with no download."""

import re

import numpy as np
import pytest

from alexnet_jax import datasets, networks, train, workdir
from alexnet_jax.networks import alexnet
from configs import default, paper, smoke
from tests.helpers import ROOT

# The paper's hyper-parameters: the network (sections 2, 3), the augmentation (4.1), dropout (4.2),
# the update rule, schedule and length of training (5), and the test-time crops (4.1).
PAPER_FIELDS = {
    "model": (
        "variant num_classes image_size lrn lrn_k lrn_n lrn_alpha lrn_beta lrn_span dropout_rate dropout_scaling "
        "fc_width activation pool_window pool_stride init_scheme"
    ),
    "data": "name eval_split resize_size random_crop random_flip pca_lighting_std normalisation",
    "optim": "batch_size learning_rate momentum weight_decay",
    "schedule": "kind factor max_cuts",
    "train": "num_epochs",
    "eval": "ten_crop",
}


def section_of_each_field() -> dict[str, str]:
    """`{"model.lrn_k": "3.3", ...}`: the section cited in the comment on each field's line of
    configs/paper.py, or on the line before it when the comment goes on there ("... and s = 2")."""
    cited, previous = {}, None
    groups = {"evaluation": "eval"}  # the local name of config.eval
    with open(f"{ROOT}/configs/paper.py") as f:
        for line in f:
            found = re.match(r"\s+(\w+)\.(\w+) = [^#]*#\s*(.*)$", line)
            if not found:
                continue
            group, field, comment = found.groups()
            section = re.search(r"[Ss]ec(?:tion|\.)\s*(\d(?:\.\d)?)", comment)
            if section:
                cited[f"{groups.get(group, group)}.{field}"] = previous = section.group(1)
            elif comment.startswith("...") and previous:
                cited[f"{groups.get(group, group)}.{field}"] = previous
            else:
                previous = None
    return cited


def test_the_papers_hyper_parameters_cite_their_section():
    cited = section_of_each_field()
    fields = [f"{group}.{name}" for group, names in PAPER_FIELDS.items() for name in names.split()]
    config = paper.get_config()
    assert all(name in config[group] for group, name in (f.split(".") for f in fields))  # no stale names
    assert [field for field in fields if field not in cited] == []
    assert cited["model.lrn_k"] == "3.3" and cited["optim.weight_decay"] == "5" and cited["eval.ten_crop"] == "4.1"


def flatten(config) -> dict:
    return {
        f"{group}.{name}": value
        for group, fields in config.items()
        if hasattr(fields, "items")
        for name, value in fields.items()
    }


def test_the_default_changes_only_what_the_digits_need():
    """configs/default.py is the paper's recipe but for the data, the input size, the classes, the
    initialisation, the dropout form, the batch, the length, the patience and how often it logs, saves and
    evaluates."""
    changed = {key for key, value in flatten(default.get_config()).items() if flatten(paper.get_config())[key] != value}
    assert changed == {
        "data.source",
        "data.name",
        "data.resize_size",
        "model.image_size",
        "model.num_classes",
        "model.init_scheme",
        "model.dropout_scaling",
        "optim.batch_size",
        "train.num_epochs",
        "schedule.patience",
        "train.log_every_steps",
        "train.checkpoint_every_steps",
        "eval.batch_size",
    }
    config = default.get_config()
    assert (config.data.resize_size, config.model.image_size, config.model.num_classes) == (72, 64, 10)
    assert (config.model.init_scheme, config.optim.batch_size, config.train.num_epochs) == ("caffe", 64, 30)
    # 64 x 64 crops: the smallest that reach pool5 (a 1 x 1 map, fc6 with 256 inputs).
    net = alexnet.AlexNet(num_classes=10)
    assert networks.param_shapes(net, 64)["fc6"]["kernel"].shape == (256, 4096)
    with pytest.raises(ValueError, match="too small"):
        networks.param_shapes(net, 63)


def test_the_digits_ship_with_the_package():
    """The default's data: scikit-learn's 1,797 digits, every 5th held out, 72 x 72 RGB, 10 classes."""
    config = default.get_config()
    data = datasets.create_data(config.data, config.model.num_classes)
    assert (data.train.size, data.eval.size, data.class_names) == (1437, 360, tuple("0123456789"))
    image, label, ok = data.eval.load(0)
    assert ok and image.shape == (72, 72, 3) and image.dtype == np.uint8 and label == 0  # digit 0 comes first
    assert (image[..., 0] == image[..., 2]).all() and image.max() > 200  # grey, on the 0-255 scale
    assert data.mean.shape == (72, 72, 3)


def test_the_smoke_config_stays_finite_when_run_longer(tmp_path):
    """configs/smoke.py for 12 epochs, twice its length: with default.py's plateau patience of 8 it fit
    the made-up data by epoch 4, kept the rate for 8 more evaluations and stopped on a non-finite
    loss at step 75; with the paper's patience of 2 the rate falls two evaluations after the held-out
    error reached zero, and the run ends finite, still at zero."""
    config = smoke.get_config()
    config.parallel.data = 1  # one device, as `python -m alexnet_jax.main` on a CPU
    config.eval.ten_crop = False
    config.train.num_epochs = 12
    config.train.checkpoint_every_steps = 0  # only at the end
    result = train.train_and_evaluate(config, str(tmp_path))
    records = workdir.read_metrics(str(tmp_path))
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 96 and np.isfinite(losses).all() and result["top1_error"] == 0
    evals = [(r["step"], r["top1_error"]) for r in records if r["kind"] == "eval"]
    fit = next(step for step, error in evals if error == 0)
    rates = {r["step"]: r["learning_rate"] for r in records if r["kind"] == "train"}
    assert rates[fit] == pytest.approx(config.optim.learning_rate) and rates[fit + 17] < rates[fit] / 5
