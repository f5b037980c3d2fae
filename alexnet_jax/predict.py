"""Top-k classes of image files, from a training workdir or a weights file.

    python -m alexnet_jax.predict --workdir=DIR [--ten_crop] [--top=5] IMAGE_OR_FOLDER ...
    python -m alexnet_jax.predict --weights=alexnet.pth --allow_pickle IMAGE ...      # torchvision's
    python -m alexnet_jax.predict --weights=bvlc_alexnet.npy --allow_pickle IMAGE ... # Caffe's
    python -m alexnet_jax.predict --weights=FILE --config.data.resize_size=256 ...    # any field changed

The network, its input normalisation, crop size and class names come from the source (loading.py):
a workdir's best checkpoint, config, mean image and class names; a weights file's own config, or the
one it is recognised by (pretrained.py). `--config` and `--config.*` change them. Each image is
resized and cropped exactly as evaluation does it. Folders are searched recursively for image
files (hidden files and folders left out, as in training). A file that cannot be read (missing, no
permission, an I/O error, not an image) is reported with the reason and skipped, and the last line
counts them; when no image at all could be read, the command stops with one line and exit code 2.
"""

from __future__ import annotations

from alexnet_jax import cli  # noqa: F401 (first: quiets TensorFlow's start-up before anything imports it)

# isort: split
import os
import sys

import jax
import numpy as np
from absl import flags

from alexnet_jax import image_files, loading, steps

Network = loading.Network  # where the tools' networks are described


def load_network(workdir: str | None, weights: str | None, config=None, allow_pickle: bool = False) -> Network:
    """The network of a workdir or a weights file (loading.load_network); `config`: a ConfigDict or a
    config path that replaces the source's own."""
    return loading.load_network(workdir, weights, config, allow_pickle)


def image_paths(inputs: list[str]) -> list[str]:
    """Files as given, and the image files found under folders (hidden ones left out), sorted."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for directory, folders, _ in os.walk(item):
                folders[:] = [name for name in folders if not image_files.is_hidden(name)]
                found += image_files.list_images(directory)
            paths += sorted(found)
        else:
            paths.append(item)
    return paths


class NothingReadable(ValueError):
    """No input could be read as an image."""


def make_predict_fn(network: Network, ten_crop: bool):
    """Jitted `(params, uint8 images (N, S, S, 3)) -> class probabilities (N, classes)`, averaged over
    the centre crop or the paper's 10 crops exactly as evaluation averages them."""
    crop = network.config.model.image_size

    def probabilities(params, images):
        patches = steps.test_crops(images, network.normalisation, crop, ten_crop)
        n, k = patches.shape[:2]
        logits = network.model.apply({"params": params}, patches.reshape(n * k, *patches.shape[2:]))
        return jax.nn.softmax(logits).reshape(n, k, -1).mean(axis=1)

    return jax.jit(probabilities)


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable classes of one probability vector, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def predict(network: Network, inputs: list[str], *, ten_crop: bool = False, top: int = 5, predict_fn=None) -> dict:
    """Prints each image's top classes; returns {path: [(name, probability), ...]} of the readable ones.

    `predict_fn`: `make_predict_fn(network, ten_crop)` when it is at hand already (compiled once)."""
    predict_fn = predict_fn or make_predict_fn(network, ten_crop)
    results, unreadable = {}, 0
    paths = image_paths(inputs)
    for path in paths:
        try:
            image = image_files.read_rgb(path)
        except Exception as error:  # any file system fault or undecodable bytes: say which, go on
            print(f"{path}: cannot read ({image_files.why_unreadable(error)})", file=sys.stderr)
            unreadable += 1
            continue
        probs = np.asarray(predict_fn(network.params, network.resized(image)[None]))[0]
        results[path] = top_k(probs, network.class_names, min(top, len(network.class_names)))
        print(path)
        for name, p in results[path]:
            print(f"  {p:7.4f}  {name}")
    if not results:
        where = " ".join(inputs) or "(no inputs given)"
        raise NothingReadable(
            f"none of the {len(paths)} input file(s) could be read as an image"
            if paths
            else f"no image files in {where}: give image files or folders holding them"
        )
    print(f"{len(results)} image(s) predicted, {unreadable} unreadable", file=sys.stderr)
    return results


def run(
    inputs, *, workdir=None, weights=None, config=None, ten_crop=False, top=5, allow_pickle=False, config_path=None
):
    """`predict` with the network of a workdir or a weights file (`config`, or the older `config_path`,
    replaces its config)."""
    return predict(
        load_network(workdir, weights, config or config_path, allow_pickle), inputs, ten_crop=ten_crop, top=top
    )


def main(argv, source: loading.NetworkSource):
    f = source.flag_values
    network = source.network()
    print(f"network: {network.describe()}", file=sys.stderr)
    predict(network, argv[1:], ten_crop=f.ten_crop, top=f.top)


def define_flags(source: loading.NetworkSource) -> None:
    flags.DEFINE_bool(
        "ten_crop", False, "Average the paper's 10 crops instead of the centre crop.", flag_values=source.flag_values
    )
    flags.DEFINE_integer("top", 5, "How many classes to print per image.", flag_values=source.flag_values)


def run_command_line(argv: list[str]) -> int:
    """`python -m alexnet_jax.predict ARGV` in this process; returns the exit code."""
    return loading.run_tool(define_flags, main, ["alexnet_jax.predict", *argv])


if __name__ == "__main__":
    _SOURCE = loading.NetworkSource()
    define_flags(_SOURCE)
    _SOURCE.run(lambda argv: main(argv, _SOURCE))
