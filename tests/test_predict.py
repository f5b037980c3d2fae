"""predict: a workdir's or a weights file's probabilities, checked against independent computations:
a NumPy forward pass of the smoke network, torchvision's own transform and forward on two real photos,
and a NumPy forward pass written from Caffe's conventions on the same photos; ImageNet class names,
folders, 10 crops, unreadable files, --config overrides."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from alexnet_jax import datasets, loading, predict, preprocess
from alexnet_jax import weights as weights_lib
from alexnet_jax import workdir as workdir_lib
from configs import smoke
from tests import numpy_reference
from tests.helpers import ROOT, run_module, workdir_with


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir holding the smoke network (no training needed) and some image files, most of them
    72 x 72 (the resize size: the resize leaves them as they are)."""
    workdir = tmp_path_factory.mktemp("run")
    config = smoke.get_config()
    config.parallel.data = 1
    config.model.dropout_scaling = "paper"  # section 4.2's test-time 0.5, which the NumPy pass applies
    state = workdir_with(workdir, config)
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    (images / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (72, 72), dtype=np.uint8)).save(images / "sub" / "gray.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    os.symlink(images / "moved-away.png", images / "gone.png")  # a dangling link: no such file
    # Hidden files and folders are not data, here as in training.
    Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(images / ".hidden.png")
    (images / ".ipynb_checkpoints").mkdir()
    Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(images / ".ipynb_checkpoints" / "a.png")
    return workdir, images, jax.device_get(state.params)


def numpy_probabilities(params, path, mean, ten_crop):
    """The smoke network's class probabilities of a 72 x 72 image file, in NumPy alone: the mean image
    subtracted, the centre crop or the 10 crops of section 4.1, the paper's test-time dropout factor."""
    image = np.asarray(Image.open(path).convert("RGB"), np.float64) - mean
    corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)] if ten_crop else [(4, 4)]
    crops = [image[top : top + 64, left : left + 64] for top, left in corners]
    crops += [crop[:, ::-1] for crop in crops] if ten_crop else []
    torch_layout = weights_lib.to_torch_layout(jax.tree.map(np.asarray, params), names="layer")
    nchw = np.stack(crops).transpose(0, 3, 1, 2)
    logits = numpy_reference.alexnet_forward(torch_layout, nchw, ((0, 3), (0, 3)), dropout_scale=0.5)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).mean(axis=0)


def test_predict_from_workdir_folder_and_ten_crop_match_numpy(run, capsys):
    workdir, images, params = run
    good = [str(images / f"img{i}.png") for i in range(3)] + [str(images / "sub" / "gray.png")]
    mean = np.load(os.path.join(workdir, "stats.npz"))["mean"]
    for ten_crop in (False, True):
        results = predict.run([str(images)], workdir=str(workdir), ten_crop=ten_crop)
        assert sorted(results) == sorted(good)
        for path in good:
            expected = numpy_probabilities(params, path, mean, ten_crop)
            order = np.argsort(-expected, kind="stable")
            assert [name for name, _ in results[path]] == [f"class_{i}" for i in order]
            np.testing.assert_allclose([p for _, p in results[path]], expected[order], rtol=1e-4, atol=1e-6)
    err = capsys.readouterr().err
    assert "broken.jpg: cannot read (not an image that can be decoded" in err
    assert "gone.png: cannot read (" in err and "No such file or directory" in err
    assert err.strip().splitlines()[-1] == "4 image(s) predicted, 2 unreadable"
    # Not a uniform answer: the check above would be weak if every class had 1/4.
    assert max(p for _, p in results[good[0]]) - min(p for _, p in results[good[0]]) > 0.02


def test_a_weights_file_carries_its_network_input_and_class_names(run, tmp_path):
    workdir, images, _ = run
    from_workdir = predict.run([str(images / "img0.png")], workdir=str(workdir))
    weights_lib.convert(str(workdir), str(tmp_path / "w.npz"))
    # No --config: the .npz holds the config, the mean image and the class names of its run.
    from_file = predict.run([str(images / "img0.png")], weights=str(tmp_path / "w.npz"))
    assert from_file == from_workdir
    network = predict.load_network(None, str(tmp_path / "w.npz"))
    assert network.config.model.fc_width == 512 and network.config.data.resize_size == 72
    assert network.class_names == [f"class_{i}" for i in range(4)]


def test_cli_with_config_overrides(run, tmp_path, capsys):
    workdir, images, _ = run
    code = predict.run_command_line(
        [f"--workdir={workdir}", "--top=2", str(images / "img1.png"), str(images / "broken.jpg")]
    )
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert lines[0].endswith("img1.png") and len(lines) == 3
    assert "broken.jpg: cannot read" in err and "1 image(s) predicted, 1 unreadable" in err
    # An override changes the network's input: another resize size changes every probability...
    assert (
        predict.run_command_line([f"--workdir={workdir}", "--config.data.normalisation=none", str(images / "img1.png")])
        == 0
    )
    assert capsys.readouterr().out != out
    # ... and a field that does not exist, or a missing source, is one line and exit code 2.
    assert predict.run_command_line([f"--workdir={workdir}", "--config.data.normalization=none", "x.png"]) == 2
    assert "unknown config field 'data.normalization'" in capsys.readouterr().err
    assert predict.run_command_line(["x.png"]) == 2
    assert "give --workdir=DIR" in capsys.readouterr().err
    # Nothing readable at all: one line, exit code 2.
    assert predict.run_command_line([f"--workdir={workdir}", str(images / "broken.jpg"), str(images / "gone.png")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("error: none of the 2 input file(s) could be read as an image")
    )


def test_help_lists_the_tools_flags_without_a_source(capsys):
    """`--help` needs no network: absl's usage (exit code 1, as absl's help always exits) with the
    tool's own flags and those that name the source, an override on the line notwithstanding. A help
    flag turned off, or after `--`, asks for nothing: the missing source is the usual one line."""
    code, out, err = run_module(
        "alexnet_jax.predict", "--config=configs/paper.py", "--help", "--config.no_such_field=1"
    )
    assert code == 1 and "error" not in err, err[-2000:]
    assert out.startswith("Top-k classes of image files")
    for flag in ("--[no]ten_crop:", "--top:", "--workdir:", "--weights:", "--[no]allow_pickle:"):
        assert f"\n  {flag}" in out, flag
    for argv in (["--help=false", "x.png"], ["x.png", "--", "-?"]):
        assert predict.run_command_line(argv) == 2, argv
        assert "error: give --workdir=DIR" in capsys.readouterr().err, argv


def test_export_a_workdir_best_checkpoint(run, tmp_path):
    workdir, _, params = run
    exported = weights_lib.convert(str(workdir), str(tmp_path / "best.npz"))
    for layer, leaves in weights_lib.load(str(tmp_path / "best.npz")).items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(value, params[layer][leaf])
            np.testing.assert_array_equal(value, exported[layer][leaf])
    assert workdir_lib.class_names(str(workdir)) == [f"class_{i}" for i in range(4)]


# ------------------------------------------------------------------ imported weights, real photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-learn's two photos (china.jpg, flower.jpg, 427 x 640) as lossless PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, image in zip(("china", "flower"), load_sample_images().images):
        Image.fromarray(image).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# torchvision's side, in a process of its own: torchvision imports Triton, whose libraries crash
# when loaded into a process that holds TensorFlow's and XLA's. It writes torchvision's AlexNet with
# random weights in its exact state-dict layout (its default initialisation scaled by 2.4, so that
# the photos get different, far from uniform answers), and what torchvision computes: its own
# evaluation transform's pixels and probabilities, and its probabilities for our 224 x 224 pixels.
TORCHVISION_SIDE = """
import sys
import numpy as np, torch, torchvision
from PIL import Image
from torchvision import transforms
folder, photos = sys.argv[1], sys.argv[2:]
torch.manual_seed(0)
model = torchvision.models.alexnet(weights=None).eval()
with torch.no_grad():
    for name, parameter in model.named_parameters():
        if name.endswith("weight"):
            parameter.mul_(2.4)
torch.save(model.state_dict(), folder + "/alexnet.pth")
normalise = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
evaluation = transforms.Compose([crop, transforms.ToTensor(), normalise])
images = [Image.open(path).convert("RGB") for path in photos]
ours = np.load(folder + "/our_pixels.npy")
with torch.no_grad():
    theirs = torch.softmax(model(torch.stack([evaluation(image) for image in images])), -1).numpy()
    on_ours = torch.softmax(model(torch.stack([normalise(transforms.functional.to_tensor(p)) for p in ours])), -1)
np.savez(folder + "/torchvision.npz", probabilities=theirs, on_our_pixels=on_ours.numpy(),
         pixels=np.stack([np.asarray(crop(image)) for image in images]))
"""


def test_torchvision_weights_give_torchvision_probabilities(photos, tmp_path, capsys):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    our_pixels = np.stack(
        [preprocess.resize_shorter_and_center_crop(image, 256).numpy()[16:240, 16:240] for image in images]
    )
    np.save(tmp_path / "our_pixels.npy", our_pixels)
    subprocess.run([sys.executable, "-c", TORCHVISION_SIDE, str(tmp_path), *photos], check=True, cwd=ROOT)
    with np.load(tmp_path / "torchvision.npz") as side:
        theirs, on_our_pixels, their_pixels = side["probabilities"], side["on_our_pixels"], side["pixels"]

    network = loading.load_network(weights=str(tmp_path / "alexnet.pth"), allow_pickle=True)
    assert network.config.model.variant == "torchvision" and network.config.data.normalisation == "torchvision"
    probabilities = one_image_at_a_time(network)
    ours = np.stack([probabilities(network.resized(image)) for image in images])
    # 1. Given torchvision's own 224 x 224 pixels, our normalisation and network compute torchvision's numbers.
    same_input = np.stack([probabilities(centred(pixels, 256)) for pixels in their_pixels])
    np.testing.assert_allclose(same_input, theirs, atol=2e-6)
    # 2. Our resize gives their crop but for the interpolation (TensorFlow's antialiased bilinear
    # against PIL's): at most 1 in 255 per pixel.
    assert np.abs(our_pixels.astype(int) - their_pixels).max() <= 1
    # 3. What that difference changes, measured with torchvision's own network, bounds ours.
    interpolation = np.abs(on_our_pixels - theirs).max()
    difference = np.abs(ours - theirs).max()
    with capsys.disabled():  # shown with -s: the figures docs/weights.md quotes
        print(f"torchvision: largest probability difference {difference:.5f}, interpolation {interpolation:.5f}")
    assert difference <= interpolation + 1e-5
    for mine, reference in zip(ours, theirs):
        assert list(np.argsort(-mine)[:5]) == list(np.argsort(-reference)[:5])
        assert reference.max() > 0.1  # a real ranking, not a uniform one
    assert np.argmax(theirs[0]) != np.argmax(theirs[1])  # the photos get different answers

    # predict prints ImageNet's class names, torchvision's top five in its order.
    capsys.readouterr()
    predict.predict(network, photos, predict_fn=probabilities.compiled)
    out = capsys.readouterr().out.splitlines()
    lemmas = [lemma for _, lemma in datasets.imagenet_classes()]
    for i, path in enumerate(photos):
        block = out[out.index(path) + 1 : out.index(path) + 6]
        assert [line.split("  ", 2)[-1] for line in block] == [lemmas[c] for c in np.argsort(-theirs[i])[:5]]


def one_image_at_a_time(network):
    """`(uint8 image at the resize size) -> class probabilities of its centre crop`, compiled once."""
    compiled = predict.make_predict_fn(network, ten_crop=False)

    def probabilities(resized):
        return np.asarray(compiled(network.params, resized[None]))[0]

    probabilities.compiled = compiled
    return probabilities


def centred(crop, side):
    """`crop` in the middle of a side x side canvas, where the centre crop cuts it out again."""
    canvas = np.zeros((side, side, 3), np.uint8)
    start = (side - crop.shape[0]) // 2
    canvas[start : start + crop.shape[0], start : start + crop.shape[1]] = crop
    return canvas


def test_caffe_weights_give_caffe_probabilities(photos, tmp_path):
    # bvlc_alexnet's shapes with random weights (scaled so that the photos get far from uniform
    # answers) in Caffe's own layout, as caffe-tensorflow's .npy holds them.
    blobs = numpy_reference.random_caffe_blobs(np.random.default_rng(0), gain=0.63)
    form = numpy_reference.caffe_tensorflow_form(blobs)
    np.save(tmp_path / "bvlc_alexnet.npy", np.array(form, dtype=object), allow_pickle=True)
    network = loading.load_network(weights=str(tmp_path / "bvlc_alexnet.npy"), allow_pickle=True)
    model = network.config.model
    assert (model.image_size, model.lrn_span, model.lrn_k, network.config.data.normalisation) == (
        227,
        "all",
        1,
        "caffe",
    )
    probabilities = one_image_at_a_time(network)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    ours = np.stack([probabilities(network.resized(image)) for image in images])

    # Caffe's side: the photo resized by PIL (shorter side 256) and cropped to 227 where ours is cut,
    # then Caffe's preprocessing (BGR, 0-255, minus its mean pixel) and Caffe's layers, in NumPy.
    pil_pixels = []
    for image in images:
        height, width = image.shape[:2]
        resized_width = 256 * width // height
        left = (resized_width - 256 + 1) // 2 + 14
        pil = np.asarray(Image.fromarray(image).resize((resized_width, 256), Image.BILINEAR))
        pil_pixels.append(pil[14:241, left : left + 227])
    caffe = softmax(
        numpy_reference.caffe_alexnet_forward(blobs, numpy_reference.caffe_preprocess(np.stack(pil_pixels)))
    )
    on_pil_pixels = np.stack([probabilities(centred(pixels, 256)) for pixels in pil_pixels])
    np.testing.assert_allclose(on_pil_pixels, caffe, atol=2e-5)  # the same pixels: Caffe's numbers
    interpolation = np.abs(ours - on_pil_pixels).max()  # what TensorFlow's resize against PIL's changes
    difference = np.abs(ours - caffe).max()
    print(f"Caffe: largest probability difference {difference:.5f}, interpolation {interpolation:.5f}")
    assert difference <= interpolation + 2e-5
    for mine, reference in zip(ours, caffe):
        assert list(np.argsort(-mine)[:5]) == list(np.argsort(-reference)[:5])
        assert reference.max() > 0.1
