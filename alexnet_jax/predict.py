"""Top-k classes of image files, from a training workdir or a weights file.

    python -m alexnet_jax.predict --workdir=DIR [--ten_crop] [--top=5] IMAGE_OR_FOLDER ...
    python -m alexnet_jax.predict --weights=alexnet.npz --config=configs/paper.py IMAGE ...

A workdir supplies its best checkpoint, its resolved config, the mean image it trained with and its
class names; a weights file (see weights.py) takes the config's model and ImageNet's built-in
statistics. Folders are searched recursively for image files. An unreadable file is reported and
skipped; the exit code is 1 only if no image could be read.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from absl import flags

from alexnet_jax import datasets, networks, preprocess, statistics, steps
from alexnet_jax import weights as weights_lib
from alexnet_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Network:
    """A trained network ready to predict: its module, parameters, config, mean image and class names."""

    model: Any
    params: Any
    config: Any
    mean: np.ndarray
    class_names: list[str]

    def resized(self, image: np.ndarray) -> np.ndarray:
        """An RGB image as evaluation takes it: uint8, shorter side to the resize size, centre square."""
        return preprocess.resize_shorter_and_center_crop(tf.constant(image), self.config.data.resize_size).numpy()


def load_network(
    workdir: str | None, weights: str | None, config_path: str | None, allow_pickle: bool = False
) -> Network:
    """A workdir's best checkpoint with its own config, statistics and class names; or a weights file
    with `config_path`'s model and ImageNet's built-in statistics."""
    if workdir:
        path = config_path or os.path.join(workdir, workdir_lib.CONFIG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
        config = cli.load_config(path)
        params, _ = workdir_lib.restore_params(workdir, config, "best")
        mean = statistics.read_statistics(workdir, config.data.resize_size)[0]
        names = workdir_lib.class_names(workdir)
    else:
        if not (weights and config_path):
            raise ValueError("give --workdir, or --weights with --config")
        config = cli.load_config(config_path)
        params, mean, names = weights_lib.load(weights, allow_pickle=allow_pickle), statistics.IMAGENET_MEAN_RGB, None
    if names is None:
        names = _default_names(config.model.num_classes)
    mean = mean if config.data.subtract_mean else None
    return Network(networks.from_config(config.model), params, config, mean, datasets.readable_class_names(names))


def _default_names(num_classes: int) -> list[str]:
    if num_classes == 1000:  # a weights file of 1000 classes: taken to be ImageNet's
        return [wordnet_id for wordnet_id, _ in datasets.imagenet_classes()]
    return [f"class {i}" for i in range(num_classes)]


def image_paths(inputs: list[str]) -> list[str]:
    """Files as given, and image files found under folders, sorted."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = [os.path.join(d, f) for d, _, files in os.walk(item) for f in files]
            paths += sorted(p for p in found if p.lower().endswith(datasets.IMAGE_EXTENSIONS))
        else:
            paths.append(item)
    return paths


def make_predict_fn(network: Network, ten_crop: bool):
    """Jitted `(params, uint8 images (N, S, S, 3)) -> class probabilities (N, classes)`, averaged over
    the centre crop or the paper's 10 crops exactly as evaluation averages them."""
    crop = network.config.model.image_size

    def probabilities(params, images):
        patches = steps.test_crops(images, network.mean, crop, ten_crop)
        n, k = patches.shape[:2]
        logits = network.model.apply({"params": params}, patches.reshape(n * k, *patches.shape[2:]))
        return jax.nn.softmax(logits).reshape(n, k, -1).mean(axis=1)

    return jax.jit(probabilities)


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable classes of one probability vector, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def run(inputs, *, workdir=None, weights=None, config_path=None, ten_crop=False, top=5, allow_pickle=False):
    """Prints each image's top classes; returns {path: [(name, probability), ...]} of the readable ones."""
    network = load_network(workdir, weights, config_path, allow_pickle)
    predict_fn = make_predict_fn(network, ten_crop)
    results = {}
    for path in image_paths(inputs):
        try:
            with open(path, "rb") as f:
                image = datasets.decode_rgb(f.read())
        except Exception as error:  # unreadable file: say so and go on
            print(f"{path}: cannot read ({type(error).__name__}: {error})", file=sys.stderr)
            continue
        probs = np.asarray(predict_fn(network.params, network.resized(image)[None]))[0]
        results[path] = top_k(probs, network.class_names, min(top, len(network.class_names)))
        print(path)
        for name, p in results[path]:
            print(f"  {p:7.4f}  {name}")
    return results


def main(argv):
    f = flags.FLAGS
    results = run(
        argv[1:],
        workdir=f.workdir,
        weights=f.weights,
        config_path=f.config,
        ten_crop=f.ten_crop,
        top=f.top,
        allow_pickle=f.allow_pickle,
    )
    sys.exit(0 if results else 1)


if __name__ == "__main__":
    cli.define_network_flags()
    flags.DEFINE_bool("ten_crop", False, "Average the paper's 10 crops instead of the centre crop.")
    flags.DEFINE_integer("top", 5, "How many classes to print per image.")
    cli.run(main)
