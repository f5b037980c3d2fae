"""The network against the paper: shapes, parameter counts (the variants' by hand), init, dropout,
tower grouping, and the per-backend implementation choices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import networks
from alexnet_jax.networks import alexnet
from configs import paper

PAPER_SHAPES = {
    "conv1_out": (55, 55, 96),
    "pool1": (27, 27, 96),
    "conv2_out": (27, 27, 256),
    "pool2": (13, 13, 256),
    "conv3_out": (13, 13, 384),
    "conv4_out": (13, 13, 384),
    "conv5_out": (13, 13, 256),
    "pool5": (6, 6, 256),
    "fc6_out": (4096,),
    "fc7_out": (4096,),
    "fc8_out": (1000,),
}
PAPER_PARAMS = {
    "conv1": 34_944,
    "conv2": 307_456,
    "conv3": 885_120,
    "conv4": 663_936,
    "conv5": 442_624,
    "fc6": 37_752_832,
    "fc7": 16_781_312,
    "fc8": 4_097_000,
}
# Section 3.2's one-GPU comparison net, counted by hand: half the kernels in conv1-conv4, conv5 and
# the fully connected layers at full size (the paper's footnote), weights + biases.
ONE_TOWER_PARAMS = {
    "conv1": 11 * 11 * 3 * 48 + 48,
    "conv2": 5 * 5 * 48 * 128 + 128,
    "conv3": 3 * 3 * 128 * 192 + 192,
    "conv4": 3 * 3 * 192 * 192 + 192,
    "conv5": 3 * 3 * 192 * 256 + 256,
    "fc6": 6 * 6 * 256 * 4096 + 4096,
    "fc7": 4096 * 4096 + 4096,
    "fc8": 4096 * 1000 + 1000,
}


def activations(model, image_size, batch=1):
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    params = networks.param_shapes(model, image_size)
    _, state = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]), params, images)
    return {k: v[0].shape[1:] for k, v in state["intermediates"].items()}


def counts(model):
    return {k: networks.count_params(v) for k, v in networks.param_shapes(model, 224).items()}


@pytest.mark.parametrize("image_size", [224, 227])
@pytest.mark.parametrize("options", [{}, {"pool_window": 2, "pool_stride": 2}, {"activation": "tanh"}])
def test_layer_shapes(image_size, options):
    # Non-overlapping 2 x 2 pooling (section 3.4's comparison) gives the same shapes: 55 -> 27 -> 13 -> 6.
    assert activations(alexnet.AlexNet(**options), image_size) == PAPER_SHAPES


def test_parameter_counts_per_layer_and_total():
    assert counts(alexnet.AlexNet()) == PAPER_PARAMS
    assert sum(PAPER_PARAMS.values()) == 60_965_224
    shapes = networks.param_shapes(alexnet.AlexNet(), 224)
    # Canonical layout: grouped kernels (kh, kw, in/2, out), dense (in, out).
    assert shapes["conv2"]["kernel"].shape == (5, 5, 48, 256)
    assert shapes["conv4"]["kernel"].shape == (3, 3, 192, 384)
    assert shapes["conv5"]["kernel"].shape == (3, 3, 192, 256)
    assert shapes["fc6"]["kernel"].shape == (9216, 4096)
    # The ablations of sections 3.1 and 3.4 change no parameter.
    assert counts(alexnet.AlexNet(activation="tanh", pool_window=2, pool_stride=2)) == PAPER_PARAMS


def test_one_tower_half_width_variant():
    net = alexnet.AlexNet(variant="one_tower")
    assert counts(net) == ONE_TOWER_PARAMS
    assert sum(ONE_TOWER_PARAMS.values()) == 59_798_312  # 1.9 % fewer than the two towers' 60,965,224
    acts = activations(net, 224)
    assert acts["conv1_out"] == (55, 55, 48) and acts["conv4_out"] == (13, 13, 192) and acts["pool5"] == (6, 6, 256)


def test_torchvision_variant():
    net = alexnet.AlexNet(variant="torchvision")
    assert sum(counts(net).values()) == 61_100_840
    acts = activations(net, 224)
    assert acts["conv1_out"] == (55, 55, 64) and acts["pool5"] == (6, 6, 256)


def test_too_small_input_and_unknown_options_are_clear_errors():
    with pytest.raises(ValueError, match="too small"):
        activations(alexnet.AlexNet(), 40)
    with pytest.raises(ValueError, match="variant must be one of"):
        networks.param_shapes(alexnet.AlexNet(variant="vgg"), 224)
    with pytest.raises(ValueError, match="activation must be one of"):
        networks.param_shapes(alexnet.AlexNet(activation="sigmoid"), 224)


def test_init_statistics(paper_params):
    for name in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        std = float(np.std(paper_params[name]["kernel"]))
        assert abs(std - 0.01) < 0.0005, (name, std)
        assert abs(float(np.mean(paper_params[name]["kernel"]))) < 0.001
    for name in alexnet.LAYER_NAMES:
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        np.testing.assert_array_equal(np.asarray(paper_params[name]["bias"]), expected)


def test_caffe_init_scheme():
    params = networks.init_params(alexnet.AlexNet(init_scheme="caffe", num_classes=10), jax.random.key(0), 67)
    assert abs(float(jnp.std(params["fc7"]["kernel"])) - 0.005) < 0.00025
    np.testing.assert_array_equal(np.asarray(params["fc6"]["bias"]), np.float32(0.1))
    # cuda-convnet's: std 0.03 in conv3-conv5, the paper's elsewhere.
    params = networks.init_params(alexnet.AlexNet(init_scheme="cuda-convnet", num_classes=10), jax.random.key(0), 67)
    for name, std in (("conv2", 0.01), ("conv3", 0.03), ("conv5", 0.03), ("fc6", 0.01)):
        assert abs(float(jnp.std(params[name]["kernel"])) - std) < 0.05 * std, name
    np.testing.assert_array_equal(np.asarray(params["conv4"]["bias"]), np.float32(1.0))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(4), (2, 224, 224, 3)) * 60.0


def outputs(net, params, images, **kwargs):
    _, state = jax.jit(lambda p: net.apply({"params": p}, images, mutable=["intermediates"], **kwargs))(params)
    return {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}


def test_dropout_only_in_training(paper_params, images):
    net = alexnet.AlexNet()
    evaluation = outputs(net, paper_params, images)
    np.testing.assert_array_equal(evaluation["fc8_out"], outputs(net, paper_params, images)["fc8_out"])
    train = lambda seed: outputs(net, paper_params, images, train=True, rngs={"dropout": jax.random.key(seed)})  # noqa: E731
    a, b, again = train(0), train(1), train(0)
    assert not np.allclose(a["fc8_out"], b["fc8_out"])
    np.testing.assert_array_equal(a["fc8_out"], again["fc8_out"])
    # About half of fc6's live units are dropped, and the kept ones doubled.
    alive = evaluation["fc6_out"] > 0
    assert 0.4 < (a["fc6_out"][alive] == 0).mean() < 0.6
    kept = alive & (a["fc6_out"] != 0)
    np.testing.assert_allclose(a["fc6_out"][kept], 2 * evaluation["fc6_out"][kept], rtol=1e-5)


def perturb_second_tower(params, layer, scale=3.0):
    kernel = np.array(params[layer]["kernel"])
    kernel[..., kernel.shape[-1] // 2 :] *= scale
    return {**params, layer: {**params[layer], "kernel": kernel}}


def test_grouped_layers_only_see_their_own_tower(paper_params, images):
    net = alexnet.AlexNet()
    base = outputs(net, paper_params, images)
    # Changing the second tower's conv1 maps changes what conv2's second tower sees only.
    changed = outputs(net, perturb_second_tower(paper_params, "conv1"), images)
    np.testing.assert_array_equal(changed["conv2_out"][..., :128], base["conv2_out"][..., :128])
    assert not np.allclose(changed["conv2_out"][..., 128:], base["conv2_out"][..., 128:])
    # conv3 is a cross layer: both of its towers see the change.
    for tower in (slice(0, 192), slice(192, 384)):
        assert not np.allclose(changed["conv3_out"][..., tower], base["conv3_out"][..., tower])
    # The second tower's conv3 maps reach conv4 and conv5 of that tower only, then fc6 in full.
    changed = outputs(net, perturb_second_tower(paper_params, "conv3"), images)
    np.testing.assert_array_equal(changed["conv4_out"][..., :192], base["conv4_out"][..., :192])
    np.testing.assert_array_equal(changed["conv5_out"][..., :128], base["conv5_out"][..., :128])
    assert not np.allclose(changed["conv5_out"][..., 128:], base["conv5_out"][..., 128:])
    for tower in (slice(0, 2048), slice(2048, 4096)):
        assert not np.allclose(changed["fc6_out"][..., tower], base["fc6_out"][..., tower])


def test_implementation_choices_give_the_same_logits(paper_params, images):
    reference = jax.jit(alexnet.AlexNet().apply)({"params": paper_params}, images)
    other = alexnet.AlexNet(grouped_conv="feature_group", pool_gradient="xla", lrn_gradient="autodiff")
    np.testing.assert_allclose(
        np.asarray(jax.jit(other.apply)({"params": paper_params}, images)),
        np.asarray(reference),
        rtol=1e-5,
        atol=1e-5 * float(jnp.abs(reference).max()),
    )


def test_from_config_resolves_auto_per_backend():
    config = paper.get_config().model
    assert config.grouped_conv == config.pool_gradient == config.lrn_gradient == "auto"
    for backend, table in networks.AUTO_CHOICES.items():
        assert networks.implementation_choices(config, backend) == table
    explicit = ml_collections.ConfigDict({**config.to_dict(), "pool_gradient": "xla"})
    assert networks.implementation_choices(explicit, "cpu")["pool_gradient"] == "xla"
    net = networks.from_config(explicit)
    assert (net.pool_gradient, net.grouped_conv) == (
        "xla",
        networks.AUTO_CHOICES[jax.default_backend()]["grouped_conv"],
    )
    assert net.variant == "paper" and net.activation == "relu" and (net.pool_window, net.pool_stride) == (3, 2)
