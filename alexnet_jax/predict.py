"""Top-k classes of image files, from a training workdir or a weights file.

    python -m alexnet_jax.predict --workdir=DIR [--ten_crop] [--top=5] IMAGE_OR_FOLDER ...
    python -m alexnet_jax.predict --weights=alexnet.npz --config=configs/paper.py IMAGE ...

A workdir supplies its best checkpoint, its resolved config, the mean image it trained with and its
class names; a weights file (see weights.py) takes the config's model and ImageNet's built-in
statistics. Folders are searched recursively for image files. An unreadable file is reported and
skipped; the exit code is 1 only if no image could be read.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import datasets, input_pipeline, optim, parallel, preprocess, steps
from alexnet_jax import model as model_lib
from alexnet_jax import weights as weights_lib

CLASS_NAMES_FILE = "class_names.json"


def save_run_metadata(workdir: str, config, data) -> None:
    """What predict needs besides the checkpoint: the resolved config, the training statistics
    and the class names."""
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    datasets.write_statistics(workdir, data.mean, data.pca_scale, data.pca_axes)
    with open(os.path.join(workdir, CLASS_NAMES_FILE), "w") as f:
        json.dump(list(data.class_names), f)


def _best_params(config, workdir: str):
    """The best (else newest) checkpoint's parameters, restored onto this host's first device."""
    net = model_lib.from_config(config.model)
    optimizer = optim.paper_sgd()
    mesh = parallel.make_mesh(1, 1)
    abstract = jax.eval_shape(
        lambda: steps.create_train_state(net, optimizer, mesh, jax.random.key(0), config.model.image_size, 0.0)
    )
    shardings = steps.state_shardings(abstract, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=1, asynchronous=False)
    try:
        restored = checkpoints.restore_best(target)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}")
    return net, restored[0].params


def load_predictor(workdir: str | None, weights: str | None, config_path: str | None, allow_pickle: bool = False):
    """(model, params, config, mean, class names) from a workdir or from a weights file + config."""
    if workdir:
        path = config_path or os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
        config = _load_config(path)
        net, params = _best_params(config, workdir)
        mean = datasets.read_statistics(workdir, config.data.resize_size)[0]
        names_path = os.path.join(workdir, CLASS_NAMES_FILE)
        names = json.load(open(names_path)) if os.path.exists(names_path) else None
    else:
        if not (weights and config_path):
            raise ValueError("give --workdir, or --weights with --config")
        config = _load_config(config_path)
        net, params = model_lib.from_config(config.model), weights_lib.load(weights, allow_pickle=allow_pickle)
        mean, names = preprocess.IMAGENET_MEAN_RGB, None
    if names is None:
        names = _default_names(config.model.num_classes)
    return net, params, config, mean, datasets.readable_class_names(names)


def _load_config(path: str):
    if path.endswith(".json"):
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    import runpy

    return runpy.run_path(path)["get_config"]()


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


def crops(image: np.ndarray, config, mean: np.ndarray, ten_crop: bool) -> np.ndarray:
    """Test-time patches of one RGB image, as evaluation makes them: (1 or 10, S, S, 3)."""
    resized = preprocess.resize_shorter_and_center_crop(tf.constant(image, tf.float32), config.data.resize_size)
    mean = mean if config.data.subtract_mean else None
    return input_pipeline.eval_crops(tf.round(resized), mean, config.model.image_size, ten_crop).numpy()


def predict(forward, params, batch_crops: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over each image's crops: (N, crops, S, S, 3) -> (N, classes).

    `forward(params, images) -> logits` is jitted once by the caller and reused for every image.
    """
    n, k = batch_crops.shape[:2]
    logits = forward(params, jnp.asarray(batch_crops.reshape(n * k, *batch_crops.shape[2:])))
    return np.asarray(jax.nn.softmax(logits).reshape(n, k, -1).mean(axis=1))


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable classes of one probability vector, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def run(inputs, *, workdir=None, weights=None, config_path=None, ten_crop=False, top=5, allow_pickle=False):
    """Prints each image's top classes; returns {path: [(name, probability), ...]} of the readable ones."""
    net, params, config, mean, names = load_predictor(workdir, weights, config_path, allow_pickle)
    forward = jax.jit(lambda p, x: net.apply({"params": p}, x))
    results = {}
    for path in image_paths(inputs):
        try:
            with open(path, "rb") as f:
                image = datasets.decode_rgb(f.read())
        except Exception as error:  # unreadable file: say so and go on
            print(f"{path}: cannot read ({type(error).__name__}: {error})", file=sys.stderr)
            continue
        probs = predict(forward, params, crops(image, config, mean, ten_crop)[None])[0]
        results[path] = top_k(probs, names, min(top, len(names)))
        print(path)
        for name, p in results[path]:
            print(f"  {p:7.4f}  {name}")
    return results


def main(argv):
    if logging.get_verbosity() < 1:  # Orbax's INFO lines would bury the output
        logging.set_verbosity(logging.WARNING)
    try:
        results = run(
            argv[1:],
            workdir=flags.FLAGS.workdir,
            weights=flags.FLAGS.weights,
            config_path=flags.FLAGS.config,
            ten_crop=flags.FLAGS.ten_crop,
            top=flags.FLAGS.top,
            allow_pickle=flags.FLAGS.allow_pickle,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if results else 1)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A training workdir (best checkpoint, its config and statistics).")
    flags.DEFINE_string("weights", None, "A weights file (.npz; .npy/.pth with --allow_pickle) instead of a workdir.")
    flags.DEFINE_string("config", None, "Config file (.py) or resolved config (.json); default: the workdir's.")
    flags.DEFINE_bool("ten_crop", False, "Average the paper's 10 crops instead of the centre crop.")
    flags.DEFINE_integer("top", 5, "How many classes to print per image.")
    flags.DEFINE_bool("allow_pickle", False, "Allow pickle-based weight files (only ones you trust).")
    app.run(main)
