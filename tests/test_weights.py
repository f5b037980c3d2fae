"""PyTorch-convention weights load into the canonical tree and give a NumPy forward's logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import weights as weights_lib
from tests import numpy_reference


@pytest.fixture(scope="module")
def torch_weights():
    return numpy_reference.random_torch_weights(np.random.default_rng(0), num_classes=1000)


@pytest.mark.parametrize("image_size,conv1_pad", [(227, ((0, 0), (0, 0))), (224, ((0, 3), (0, 3)))])
def test_torch_layout_gives_numpy_reference_logits(torch_weights, image_size, conv1_pad):
    images = np.random.default_rng(1).uniform(-120, 120, (2, image_size, image_size, 3)).astype(np.float32)
    params = weights_lib.from_torch_layout(torch_weights)
    ours = model_lib.AlexNet().apply({"params": params}, jnp.asarray(images))
    ref = numpy_reference.alexnet_forward(torch_weights, images.transpose(0, 3, 1, 2), conv1_pad)
    assert np.abs(ref).max() > 1.0  # the check means something only if activations survive
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_canonical_shapes_and_round_trip(torch_weights):
    params = weights_lib.from_torch_layout(torch_weights)
    expected = model_lib.param_shapes(model_lib.AlexNet(), 224)
    for layer in model_lib.LAYER_NAMES:
        for leaf in ("kernel", "bias"):
            assert params[layer][leaf].shape == expected[layer][leaf].shape
    back = weights_lib.to_torch_layout(params)
    assert back.keys() == torch_weights.keys()
    for key, value in torch_weights.items():
        np.testing.assert_array_equal(back[key], value)


def test_torchvision_key_names(torch_weights):
    renamed = weights_lib.to_torch_layout(weights_lib.from_torch_layout(torch_weights), names="torchvision")
    assert "features.0.weight" in renamed and "classifier.6.bias" in renamed
    again = weights_lib.from_torch_layout(renamed)
    np.testing.assert_array_equal(again["fc6"]["kernel"], weights_lib.from_torch_layout(torch_weights)["fc6"]["kernel"])


def test_missing_layer_is_a_clear_error(torch_weights):
    partial = {k: v for k, v in torch_weights.items() if not k.startswith("conv4")}
    with pytest.raises(KeyError, match="conv4"):
        weights_lib.from_torch_layout(partial)
