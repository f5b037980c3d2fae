"""PyTorch- and Caffe-convention weights load into the canonical tree and give a NumPy forward's logits;
files carry their network's config; the command line converts between formats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import networks
from alexnet_jax import weights as weights_lib
from alexnet_jax.networks import alexnet
from tests import numpy_reference

TORCH_NAMES = alexnet.TORCH_NAMES


@pytest.fixture(scope="module")
def torch_weights():
    return numpy_reference.random_torch_weights(np.random.default_rng(0), num_classes=1000)


@pytest.mark.parametrize("image_size,conv1_pad", [(227, ((0, 0), (0, 0))), (224, ((0, 3), (0, 3)))])
def test_torch_layout_gives_numpy_reference_logits(torch_weights, image_size, conv1_pad):
    images = np.random.default_rng(1).uniform(-120, 120, (1, image_size, image_size, 3)).astype(np.float32)
    params = weights_lib.from_torch_layout(torch_weights)
    ours = jax.jit(alexnet.AlexNet().apply)({"params": params}, jnp.asarray(images))
    ref = numpy_reference.alexnet_forward(torch_weights, images.transpose(0, 3, 1, 2), conv1_pad)
    assert np.abs(ref).max() > 1.0  # the check means something only if activations survive
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_canonical_shapes_and_round_trip(torch_weights):
    params = weights_lib.from_torch_layout(torch_weights)
    expected = networks.param_shapes(alexnet.AlexNet(), 224)
    for layer in alexnet.LAYER_NAMES:
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


def torchvision_names(weights):
    return {f"{TORCH_NAMES[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in weights.items()}


def test_torchvision_file_imports_exports_bit_for_bit_and_gives_numpy_logits(tmp_path):
    original = torchvision_names(numpy_reference.random_torch_weights(np.random.default_rng(2), variant="torchvision"))
    np.savez(tmp_path / "torchvision.npz", **original)
    params = weights_lib.load(str(tmp_path / "torchvision.npz"))
    weights_lib.save(params, str(tmp_path / "ours.npz"))
    again = weights_lib.to_torch_layout(weights_lib.load(str(tmp_path / "ours.npz")), names="torchvision")
    assert again.keys() == original.keys()
    for key in original:
        np.testing.assert_array_equal(again[key], original[key])
    images = np.random.default_rng(3).uniform(-120, 120, (1, 224, 224, 3)).astype(np.float32)
    ours = jax.jit(alexnet.AlexNet(variant="torchvision").apply)({"params": params}, jnp.asarray(images))
    layer_named = {
        f"{name}.{leaf}": original[f"{tv}.{leaf}"] for name, tv in TORCH_NAMES.items() for leaf in ("weight", "bias")
    }
    ref = numpy_reference.alexnet_forward(
        layer_named, images.transpose(0, 3, 1, 2), ((2, 2), (2, 2)), towers=1, use_lrn=False
    )
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_caffe_npy_needs_the_pickle_flag_and_round_trips(tmp_path, torch_weights):
    canonical = weights_lib.from_torch_layout(torch_weights)
    caffe = weights_lib.to_caffe_layout(canonical)
    np.testing.assert_array_equal(caffe["conv1"][0], canonical["conv1"]["kernel"][:, :, ::-1])  # BGR input
    path = str(tmp_path / "bvlc_alexnet.npy")
    np.save(path, np.array(caffe, dtype=object), allow_pickle=True)
    with pytest.raises(weights_lib.PickleRefused, match="pickle"):
        weights_lib.load(path)
    params = weights_lib.load(path, allow_pickle=True)
    weights_lib.save(params, str(tmp_path / "again.npy"))
    again = np.load(str(tmp_path / "again.npy"), allow_pickle=True).item()
    for layer, (kernel, bias) in caffe.items():
        np.testing.assert_array_equal(again[layer][0], kernel)
        np.testing.assert_array_equal(again[layer][1], bias)
    # Caffe's LRN: k = 1, alpha divided by n = 5.
    images = np.random.default_rng(4).uniform(-120, 120, (1, 227, 227, 3)).astype(np.float32)
    net = alexnet.AlexNet(lrn_k=1.0, lrn_alpha=2e-5)
    ours = jax.jit(net.apply)({"params": params}, jnp.asarray(images))
    ref = numpy_reference.alexnet_forward(torch_weights, images.transpose(0, 3, 1, 2), k=1.0, alpha=2e-5)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_pytorch_state_dict_export_loads_in_torch(tmp_path, torch_weights):
    import torch  # installed by requirements-test.txt: this test must run

    params = weights_lib.from_torch_layout(torch_weights)
    path = str(tmp_path / "alexnet.pth")
    weights_lib.save(params, path, names="layer")
    with pytest.raises(weights_lib.PickleRefused):
        weights_lib.load(path)
    state = torch.load(path, weights_only=True)
    for key, value in torch_weights.items():
        np.testing.assert_array_equal(state[key].numpy(), value)
    back = weights_lib.load(path, allow_pickle=True)
    np.testing.assert_array_equal(back["fc6"]["kernel"], params["fc6"]["kernel"])


def test_unknown_format_and_missing_file_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        weights_lib.load(str(tmp_path / "none.npz"))
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="use .npz, .npy or .pth"):
        weights_lib.load(str(tmp_path / "w.h5"))


def test_convert_command_between_formats(tmp_path, torch_weights, capsys):
    params = weights_lib.from_torch_layout(torch_weights)
    weights_lib.save(params, str(tmp_path / "a.npz"))
    weights_lib.convert(str(tmp_path / "a.npz"), str(tmp_path / "caffe.npy"))
    with pytest.raises(weights_lib.PickleRefused):
        weights_lib.convert(str(tmp_path / "caffe.npy"), str(tmp_path / "b.npz"))
    # A value absl refuses stops before the pickle is read; absl's own spellings (here t) are read as absl reads them.
    refused = weights_lib.run_command_line(["--allow_pickle=yes", str(tmp_path / "caffe.npy"), str(tmp_path / "b.npz")])
    err = capsys.readouterr().err
    assert refused == 2 and err.count("error:") == 1 and "--allow_pickle=yes" in err and "Traceback" not in err
    assert not (tmp_path / "b.npz").exists()
    code = weights_lib.run_command_line(["--allow_pickle=t", str(tmp_path / "caffe.npy"), str(tmp_path / "b.npz")])
    out, err = capsys.readouterr()
    assert code == 0 and "8 layers, 60,965,224 parameters (" in out and "Caffe's bvlc_alexnet" in out, err[-2000:]
    back = weights_lib.load(str(tmp_path / "b.npz"))
    for layer in params:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(back[layer][leaf], params[layer][leaf])
    # An override changes the network the file is read as: here the paper's dropout, so the .npz
    # records it and holds fc7 and fc8 divided by 1 - rate (the same test-time function).
    args = [
        "--allow_pickle",
        str(tmp_path / "caffe.npy"),
        str(tmp_path / "c.npz"),
        "--config.model.dropout_scaling=paper",
    ]
    assert weights_lib.run_command_line(args) == 0
    paper = weights_lib.read(str(tmp_path / "c.npz"))
    assert paper.config["model"]["dropout_scaling"] == "paper" and paper.config["model"]["lrn_span"] == "all"
    np.testing.assert_allclose(paper.arrays["fc8"]["kernel"], params["fc8"]["kernel"] * 2)
    np.testing.assert_array_equal(paper.arrays["fc6"]["kernel"], params["fc6"]["kernel"])
    assert weights_lib.run_command_line([str(tmp_path / "a.npz")]) == 2


@pytest.mark.parametrize(
    "conv1,says",
    [
        (None, "Caffe layer conv1 holds a NoneType"),
        ([0.0, 0.0], "Caffe layer conv1 holds float64[] and float64[]"),
        ("ab", "Caffe layer conv1 holds <U1[] and <U1[]"),
        ([np.zeros((3, 3)), np.zeros(3)], "is not a network this code knows"),  # a pair, of no AlexNet's layer
    ],
    ids=["none", "numbers", "string", "pair"],
)
def test_a_pickled_dict_that_is_not_caffes_layers_is_one_line(tmp_path, capsys, conv1, says):
    np.save(tmp_path / "odd.npy", np.array({"conv1": conv1}, dtype=object), allow_pickle=True)
    assert weights_lib.run_command_line(["--allow_pickle", str(tmp_path / "odd.npy"), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and says in err and "Traceback" not in err, err


def test_both_numpy_forms_of_caffe_weights_load_alike(tmp_path, torch_weights):
    canonical = weights_lib.from_torch_layout(torch_weights)
    listed = weights_lib.to_caffe_layout(canonical)
    named = {layer: {"weights": kernel, "biases": bias} for layer, (kernel, bias) in listed.items()}
    for name, form in (("listed", listed), ("named", named)):
        np.save(tmp_path / f"{name}.npy", np.array(form, dtype=object), allow_pickle=True)
    a = weights_lib.load(str(tmp_path / "listed.npy"), allow_pickle=True)
    b = weights_lib.load(str(tmp_path / "named.npy"), allow_pickle=True)
    for layer in alexnet.LAYER_NAMES:
        np.testing.assert_array_equal(a[layer]["kernel"], b[layer]["kernel"])
        np.testing.assert_array_equal(a[layer]["kernel"], canonical[layer]["kernel"])


def test_exports_to_pytorch_and_caffe_carry_inverted_dropout(tmp_path, torch_weights):
    import torch

    params = weights_lib.from_torch_layout(torch_weights)
    paper = alexnet.AlexNet(dropout_scaling="paper")
    weights_lib.save(params, str(tmp_path / "paper.pth"), model=paper)
    state = torch.load(tmp_path / "paper.pth", weights_only=True)
    # torchvision's names; fc7 and fc8 read dropped units: their kernels halved for PyTorch's dropout.
    np.testing.assert_array_equal(state["classifier.4.weight"].numpy(), torch_weights["fc7.weight"] * 0.5)
    np.testing.assert_array_equal(state["classifier.6.weight"].numpy(), torch_weights["fc8.weight"] * 0.5)
    np.testing.assert_array_equal(state["classifier.1.weight"].numpy(), torch_weights["fc6.weight"])


def test_a_file_that_does_not_fit_the_configured_network_is_refused(tmp_path, torch_weights):
    weights_lib.save(weights_lib.from_torch_layout(torch_weights), str(tmp_path / "paper.npz"))
    from alexnet_jax import loading

    with pytest.raises(ValueError, match=r"conv1/kernel \(11, 11, 3, 96\) in the file, \(11, 11, 3, 64\)"):
        loading.load_network(weights=str(tmp_path / "paper.npz"), config="configs/torchvision.py")
