"""VGG-16 (configuration D) against the CS231n notes' table, and trainable with the same pipeline."""

import jax
import numpy as np
import pytest

from alexnet_jax import datasets, loading, networks, steps, summary, train
from alexnet_jax.networks import vgg
from configs import smoke, vgg16

# The VGG-16 table of the CS231n notes (cs231n.github.io/convolutional-networks), row by row: output
# shape and weights (its "params (not counting biases)").
CS231N_TABLE = [
    ("conv1_1", (224, 224, 64), 3 * 3 * 3 * 64),
    ("conv1_2", (224, 224, 64), 3 * 3 * 64 * 64),
    ("pool1", (112, 112, 64), 0),
    ("conv2_1", (112, 112, 128), 3 * 3 * 64 * 128),
    ("conv2_2", (112, 112, 128), 3 * 3 * 128 * 128),
    ("pool2", (56, 56, 128), 0),
    ("conv3_1", (56, 56, 256), 3 * 3 * 128 * 256),
    ("conv3_2", (56, 56, 256), 3 * 3 * 256 * 256),
    ("conv3_3", (56, 56, 256), 3 * 3 * 256 * 256),
    ("pool3", (28, 28, 256), 0),
    ("conv4_1", (28, 28, 512), 3 * 3 * 256 * 512),
    ("conv4_2", (28, 28, 512), 3 * 3 * 512 * 512),
    ("conv4_3", (28, 28, 512), 3 * 3 * 512 * 512),
    ("pool4", (14, 14, 512), 0),
    ("conv5_1", (14, 14, 512), 3 * 3 * 512 * 512),
    ("conv5_2", (14, 14, 512), 3 * 3 * 512 * 512),
    ("conv5_3", (14, 14, 512), 3 * 3 * 512 * 512),
    ("pool5", (7, 7, 512), 0),
    ("fc6", (4096,), 7 * 7 * 512 * 4096),
    ("fc7", (4096,), 4096 * 4096),
    ("fc8", (1000,), 4096 * 1000),
]


def test_parameter_count_and_layer_shapes_match_the_cs231n_table():
    net = vgg.VGG16()
    assert networks.count_params(networks.param_shapes(net, 224)) == 138_357_544
    table = summary.layer_table(net, 224)
    rows = [(r["name"], tuple(r["output_shape"]), r["weights"]) for r in table["layers"][1:]]
    assert rows == CS231N_TABLE
    assert table["layers"][0]["values"] == 224 * 224 * 3
    assert table["total_params"] == 138_357_544
    # The notes print ~24M values in total; its rows add up to this (the summary flags it).
    assert table["total_values"] == 15_237_608 and table["forward_bytes"] == 15_237_608 * 4
    assert round(table["total_macs"] / 1e9, 2) == 15.47
    compared = summary.table_for(vgg16.get_config())  # with the registry's CS231n figures beside
    assert [(d["row"], d["column"]) for d in compared["differences"]] == [("total", "values")]
    assert "arithmetic slip" in summary.format_table(compared)


def test_input_side_must_divide_by_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        networks.param_shapes(vgg.VGG16(), 100)


def test_vgg_config_is_the_paper_pipeline_with_vgg():
    config = vgg16.get_config()
    assert config.model.name == "vgg16" and config.optim.batch_size == 256
    assert isinstance(networks.from_config(config.model), vgg.VGG16)


def test_vgg_trains_with_the_same_pipeline(tmp_path):
    config = smoke.get_config()
    config.model.name, config.model.image_size, config.data.resize_size = "vgg16", 32, 36
    config.data.fake_train_size, config.data.fake_eval_size = 16, 8
    config.optim.batch_size, config.eval.batch_size, config.parallel.data = 16, 8, 1
    config.train.num_epochs, config.eval.ten_crop = 1, False
    result = train.train_and_evaluate(config, str(tmp_path))
    # The run's final evaluation is what its final parameters compute on the held-out images.
    params, step = loading.restore_params(str(tmp_path), config, "final")
    data = datasets.create_data(config.data, config.model.num_classes)
    images = np.stack([image for image, _, _ in data.eval.examples(range(8)).as_numpy_iterator()])
    labels = np.array([label for _, label, _ in data.eval.examples(range(8)).as_numpy_iterator()])
    crops = steps.test_crops(images, data.mean, 32, ten_crop=False)[:, 0]
    forward = jax.jit(networks.from_config(config.model).apply)  # one program, not one per operation
    probs = np.asarray(jax.nn.softmax(forward({"params": params}, crops)))
    assert step == 1 and result["count"] == 8
    assert result["top1_error"] == np.mean(probs.argmax(axis=1) != labels)
    np.testing.assert_allclose(result["loss"], -np.mean(np.log(probs[np.arange(8), labels] + 1e-12)), rtol=1e-4)
