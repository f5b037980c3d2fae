"""Fine-tuning: a run starts from another run's layers of matching shape (in its own dropout
convention), initialises the rest, says which in one line, freezes what it is told, and a resumed
run continues from its checkpoint without reading the source again."""

import logging
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax import datasets, loading, train
from configs import smoke
from tests.helpers import workdir_with


def small(classes: int):
    config = smoke.get_config()
    config.data.fake_num_classes = config.model.num_classes = classes
    config.data.fake_train_size, config.data.fake_eval_size = 32, 16
    config.parallel.data, config.eval.ten_crop = 1, False
    return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-class run (the paper's dropout) that was never trained: its layers are its seed-7 initialisation."""
    path = tmp_path_factory.mktemp("source")
    config = small(4)
    config.seed = 7
    config.model.dropout_scaling = "paper"
    state = workdir_with(path, config)
    return str(path), jax.tree.map(np.asarray, jax.device_get(state.params))


def test_layers_of_matching_shape_are_loaded_the_rest_initialised(source, caplog):
    path, theirs = source
    config = small(6)
    config.model.dropout_scaling = "inverted"
    config.train.init_from, config.train.reinit = path, "fc6"
    with caplog.at_level(logging.INFO, logger="alexnet_jax"):
        params = jax.tree.map(np.asarray, train.build(config).fresh_state().params)
    config.train.init_from = config.train.reinit = ""
    fresh = jax.tree.map(np.asarray, train.build(config).fresh_state().params)
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        np.testing.assert_array_equal(params[layer]["kernel"], theirs[layer]["kernel"])
    # fc7 reads fc6's dropped units: the paper's dropout there, inverted here, so its kernel is halved.
    np.testing.assert_array_equal(params["fc7"]["kernel"], theirs["fc7"]["kernel"] * 0.5)
    np.testing.assert_array_equal(params["fc7"]["bias"], theirs["fc7"]["bias"])
    for layer in ("fc6", "fc8"):  # reinit; and 6 classes here, 4 there
        np.testing.assert_array_equal(params[layer]["kernel"], fresh[layer]["kernel"])
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from"))
    assert "loaded conv1, conv2, conv3, conv4, conv5, fc7 (" in line
    assert "fc6 (train.reinit), fc8 (kernel (512, 6) here, (512, 4) in the source)" in line


def test_frozen_layers_do_not_move_and_a_resumed_run_does_not_reload(source, tmp_path):
    path, theirs = source
    copy = str(tmp_path / "source")
    shutil.copytree(path, copy)
    config = small(4)
    config.model.dropout_scaling = "paper"  # the source's: its layers are loaded as they are
    config.train.init_from, config.train.freeze, config.train.num_epochs = copy, "conv1,fc8", 1
    train.train_and_evaluate(config, str(tmp_path / "run"))
    params, step = loading.restore_params(str(tmp_path / "run"), config, "final")
    assert step == 2
    for layer in ("conv1", "fc8"):
        np.testing.assert_array_equal(np.asarray(params[layer]["kernel"]), theirs[layer]["kernel"])
    assert not np.array_equal(np.asarray(params["conv2"]["kernel"]), theirs["conv2"]["kernel"])
    # The source is gone: a resumed run must not need it, and the frozen layers stay put.
    shutil.rmtree(copy)
    config.train.num_epochs = 2
    train.train_and_evaluate(config, str(tmp_path / "run"))
    params, step = loading.restore_params(str(tmp_path / "run"), config, "final")
    assert step == 4
    np.testing.assert_array_equal(np.asarray(params["conv1"]["kernel"]), theirs["conv1"]["kernel"])


def test_mistakes_are_named():
    config = small(4)
    config.train.freeze = "conv9"
    with pytest.raises(ValueError, match="train.freeze='conv9': no layer conv9"):
        train.build(config)
    config.train.freeze, config.train.init_from = "", "alexnet.pth"
    with pytest.raises(ValueError, match="convert it once"):
        train.build(config).fresh_state()


def test_digits_classes_select_and_relabel():
    config = smoke.get_config().data
    config.source, config.resize_size, config.classes = "digits", 72, "5,6,7,8,9"
    data = datasets.create_data(config, 5)
    assert data.class_names == ("5", "6", "7", "8", "9") and data.train.size + data.eval.size == 896
    labels = {label for _, label, _ in data.eval.examples(range(data.eval.size)).as_numpy_iterator()}
    assert labels == set(range(5))
    config.classes = "5,x"
    with pytest.raises(ValueError, match="unknown: x"):
        datasets.create_data(config, 5)
