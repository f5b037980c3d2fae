"""The networks' registry and written interface: a network defined in this file, registered with one
line, goes through training, the summary, the weights files and predict; and the dropout conventions
convert into one another exactly (against a NumPy forward pass)."""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import config_check, loading, networks, predict, summary, train
from alexnet_jax import weights as weights_lib
from alexnet_jax.networks import alexnet, layers
from configs import smoke
from tests import numpy_reference


class TinyNet(nn.Module):
    """A network that is in no other file: one convolution, one pooling, two dense layers."""

    LAYERS: ClassVar[tuple[str, ...]] = ("conv", "hidden", "out")
    HEAD: ClassVar[tuple[str, ...]] = ("hidden", "out")
    TORCH_NAMES: ClassVar[dict[str, str]] = {}
    towers: ClassVar[int] = 1
    dropout_inputs: ClassVar[tuple[str, ...]] = ("out",)

    num_classes: int = 4
    dropout_rate: float = 0.5
    dropout_scaling: str = "inverted"
    dtype: Any = jnp.float32
    model_axis: str | None = None
    data_axis: str | None = None

    def setup(self):
        self.conv = layers.Conv(8, kernel_size=3, stride=2, padding=((1, 1), (1, 1)))
        self.hidden = layers.Dense(16)
        self.out = layers.Dense(self.num_classes)

    def features(self, images):
        x = nn.relu(self.conv(images))
        self.sow("intermediates", "conv_out", x)
        x = layers.max_pool(x, 2, 2)
        self.sow("intermediates", "pool", x)
        return x

    def classifier(self, maps, train=False):
        x = nn.relu(self.hidden(maps.reshape(maps.shape[0], -1)))
        self.sow("intermediates", "hidden_out", x)
        if train:
            first = jax.lax.axis_index(self.data_axis) * x.shape[0] if self.data_axis else 0
            x = layers.dropout(self.make_rng("dropout"), x, self.dropout_rate, first, None, self.dropout_scaling)
        else:
            x = x * layers.dropout_test_scale(self.dropout_rate, self.dropout_scaling)
        x = self.out(x)
        self.sow("intermediates", "out_out", x)
        return x.astype(jnp.float32)

    def __call__(self, images, train=False):
        return self.classifier(self.features(images), train)


def build_tiny(model_config, implementations):
    return TinyNet(model_config.num_classes, model_config.dropout_rate, model_config.dropout_scaling)


def check_tiny(config):
    if config.parallel.model != 1:
        raise ValueError("parallel.model must be 1 for the tiny network")


@pytest.fixture
def tiny_config(monkeypatch):
    # The one line that adds a network:
    monkeypatch.setitem(networks.REGISTRY, "tiny", networks.Entry(build_tiny, {}, check_tiny))
    config = smoke.get_config()
    config.model.name, config.model.image_size, config.data.resize_size = "tiny", 16, 20
    config.data.fake_train_size, config.data.fake_eval_size = 32, 16
    config.optim.batch_size, config.eval.batch_size, config.parallel.data = 16, 16, 1
    config.train.num_epochs, config.eval.ten_crop = 1, False
    config.model.dropout_scaling = "paper"  # section 4.2's, converted to PyTorch's inverted form on export
    return config


def test_a_network_in_one_file_and_one_registry_line_trains_summarises_saves_and_predicts(tiny_config, tmp_path):
    config = tiny_config
    config_check.check(config)
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["count"] == 16 and 0 <= result["top1_error"] <= 1

    table = summary.table_for(config)
    assert [row["name"] for row in table["layers"]] == ["input", "conv", "pool", "hidden", "out"]
    assert table["total_params"] == (3 * 3 * 3 * 8 + 8) + (4 * 4 * 8 * 16 + 16) + (16 * 4 + 4)
    assert "TinyNet, 16x16 input" in summary.format_table(table)

    network = loading.load_network(workdir=str(tmp_path / "run"))
    assert isinstance(network.model, TinyNet) and network.class_names == [f"class_{i}" for i in range(4)]
    network.save(str(tmp_path / "tiny.npz"))
    again = loading.load_network(weights=str(tmp_path / "tiny.npz"))  # its config, class names, statistics inside
    assert again.config.model.name == "tiny" and again.class_names == network.class_names
    np.testing.assert_array_equal(again.statistics["mean"], network.statistics["mean"])
    for layer in TinyNet.LAYERS:
        np.testing.assert_array_equal(again.params[layer]["kernel"], np.asarray(network.params[layer]["kernel"]))

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 24, 3), dtype=np.uint8)).save(image)
    top = predict.predict(again, [str(image)], top=1)[str(image)]
    crop = again.resized(np.asarray(Image.open(image).convert("RGB")))[2:18, 2:18].astype(np.float32)
    logits = TinyNet(dropout_scaling=config.model.dropout_scaling).apply(
        {"params": again.params}, (crop - again.statistics["mean"][2:18, 2:18])[None]
    )
    expected = np.asarray(jax.nn.softmax(logits))[0]
    assert top[0][0] == f"class_{expected.argmax()}" and top[0][1] == pytest.approx(expected.max(), rel=1e-5)

    # PyTorch's layout (conv OIHW, dense (out, in), CHW flatten) and back, in inverted dropout.
    weights_lib.save(again.params, str(tmp_path / "tiny.pth"), model=again.model, names="layer")
    state = weights_lib.read(str(tmp_path / "tiny.pth"), allow_pickle=True).arrays
    assert state["conv.weight"].shape == (8, 3, 3, 3) and state["hidden.weight"].shape == (16, 128)
    back = weights_lib.from_torch_layout(state, again.model)
    np.testing.assert_array_equal(back["hidden"]["kernel"], again.params["hidden"]["kernel"])
    np.testing.assert_allclose(back["out"]["kernel"], again.params["out"]["kernel"] * 0.5)  # paper -> inverted


def test_dropout_scalings_compute_the_same_function_once_converted_and_match_numpy(torch_weights_small):
    weights, images = torch_weights_small
    params = weights_lib.from_torch_layout(weights)
    net = dict(variant="paper", num_classes=10, fc_width=256)
    paper = alexnet.AlexNet(dropout_scaling="paper", **net)
    inverted = alexnet.AlexNet(dropout_scaling="inverted", **net)
    # Section 4.2 at test time: the outputs of fc6 and fc7 times 0.5; NumPy does it its own way.
    ours = np.asarray(jax.jit(paper.apply)({"params": params}, jnp.asarray(images)))
    ref = numpy_reference.alexnet_forward(weights, images.transpose(0, 3, 1, 2), dropout_scale=0.5)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    plain = numpy_reference.alexnet_forward(weights, images.transpose(0, 3, 1, 2))
    assert np.abs(plain - ref).max() > 0.1 * np.abs(ref).max()  # the factor matters here
    # paper -> inverted: fc7 and fc8 kernels times 0.5; the inverted network then computes the same logits.
    converted = networks.convert_dropout(params, inverted, "paper", 0.5)
    np.testing.assert_array_equal(converted["fc7"]["kernel"], params["fc7"]["kernel"] * 0.5)
    np.testing.assert_array_equal(converted["fc6"]["kernel"], params["fc6"]["kernel"])
    np.testing.assert_allclose(
        np.asarray(jax.jit(inverted.apply)({"params": converted}, jnp.asarray(images))),
        ours,
        rtol=1e-5,
        atol=1e-5 * np.abs(ours).max(),
    )
    back = networks.convert_dropout(converted, paper, "inverted", 0.5)
    np.testing.assert_allclose(back["fc8"]["kernel"], params["fc8"]["kernel"], rtol=1e-7)
    # torchvision's variant drops the inputs of fc6 and fc7: those kernels are the ones scaled.
    assert alexnet.AlexNet(variant="torchvision").dropout_inputs == ("fc6", "fc7")


@pytest.fixture(scope="module")
def torch_weights_small():
    weights = numpy_reference.random_torch_weights(np.random.default_rng(5), num_classes=10, pool5_side=1, std=0.02)
    for name in ("fc6", "fc7"):
        weights[f"{name}.weight"] = weights[f"{name}.weight"][:256]
        weights[f"{name}.bias"] = weights[f"{name}.bias"][:256]
    weights["fc7.weight"] = weights["fc7.weight"][:, :256]
    weights["fc8.weight"] = weights["fc8.weight"][:, :256]
    # 67 x 67: conv1 needs no padding and pool5 is 1 x 1, so that NumPy's forward pass takes no time.
    images = np.random.default_rng(6).uniform(-120, 120, (2, 67, 67, 3)).astype(np.float32)
    return weights, images


def test_training_dropout_keeps_units_unscaled_in_the_papers_form():
    x = jnp.asarray(np.random.default_rng(7).uniform(1, 2, (4, 64)), jnp.float32)
    key = jax.random.key(3)
    paper = np.asarray(layers.dropout(key, x, 0.5, 0, None, "paper"))
    inverted = np.asarray(layers.dropout(key, x, 0.5, 0, None, "inverted"))
    kept = paper != 0
    assert 0.3 < kept.mean() < 0.7  # the same mask in both
    np.testing.assert_array_equal(paper[kept], np.asarray(x)[kept])
    np.testing.assert_allclose(inverted[kept], np.asarray(x)[kept] / 0.5)
    np.testing.assert_array_equal(inverted != 0, kept)
    with pytest.raises(ValueError, match="dropout scaling"):
        layers.dropout(key, x, 0.5, 0, None, "halved")
