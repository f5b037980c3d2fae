"""Looking inside a trained network: the paper's Figures 3 and 4 as PNG files.

    python -m alexnet_jax.visualize kernels --workdir=DIR [--compare=DIR_OR_WEIGHTS] [--out=kernels.png]
    python -m alexnet_jax.visualize neighbours --workdir=DIR [--queries=6] [--neighbours=5] [--out=neighbours.png]
    python -m alexnet_jax.visualize predictions --workdir=DIR [--images=8] [--out=predictions.png]

`kernels` (Figure 3) draws the first layer's kernels, one panel per tower: for the paper's network
the 48 kernels of tower 1 above the 48 of tower 2. `--compare` draws a second run's (or weights
file's) kernels beside the first. It also prints, per tower, how much of the kernels' contrast is
colour rather than grey: the paper saw tower 1 learn largely colour-agnostic kernels and tower 2
colour-specific ones.

`neighbours` (Figure 4, right) takes query images from the evaluation split and finds, among the
training images, the ones whose fc7 features (the 4,096 ReLU outputs of the last hidden layer) are
nearest in Euclidean distance. Each row is a query and its neighbours, framed green where the
neighbour's label matches the query's and red where it does not.

`predictions` (Figure 4, left) shows evaluation images with their five most probable classes, the
true class's bar in red.

The network comes from a workdir's best checkpoint or from a weights file, with `--config` and
`--config.*` as in `predict` (loading.py); images come from the config's data source, which
`--config.data.*` changes.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import os
import sys
import time

import jax
import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from alexnet_jax import datasets, loading, networks, progress, steps

BACKGROUND = (255, 255, 255)
TILE_GAP = 2  # pixels between kernels (and between images)
PANEL_GAP = 12  # pixels between the two towers' panels, and between compared runs
LABEL_HEIGHT = 16  # a strip above each panel for its caption
MATCH, MISMATCH = (40, 160, 40), (210, 30, 30)


def _font(size: int = 11) -> ImageFont.ImageFont:
    return ImageFont.load_default(size)


# ----------------------------------------------------------------------------- Figure 3: kernels


def first_layer_kernel(params: dict, config) -> tuple[np.ndarray, int]:
    """(first convolution's kernel (kh, kw, 3, out), number of towers it is split into)."""
    network = networks.from_config(config.model)
    return np.asarray(params[network.LAYERS[0]]["kernel"]), network.towers


def kernel_images(kernel: np.ndarray, scale: str = "each") -> np.ndarray:
    """(out, kh, kw, 3) uint8 pictures of a (kh, kw, 3, out) kernel.

    scale="each" stretches every kernel to the full 0-255 range (shows each one's pattern);
    "all" uses one range for the layer (shows which kernels are strong). Zero maps to mid-grey
    in "all"; in "each" the kernel's own minimum is black.
    """
    w = np.moveaxis(kernel.astype(np.float64), -1, 0)
    if scale == "each":
        low = w.min(axis=(1, 2, 3), keepdims=True)
        span = w.max(axis=(1, 2, 3), keepdims=True) - low
        unit = (w - low) / np.where(span > 0, span, 1.0)
    elif scale == "all":
        unit = 0.5 + w / (2 * max(np.abs(w).max(), 1e-12))
    else:
        raise ValueError(f"scale must be 'each' or 'all', got {scale!r}")
    return np.round(unit * 255).astype(np.uint8)


def colour_fraction(kernel: np.ndarray) -> np.ndarray:
    """Per kernel of a (kh, kw, 3, out) kernel: the share of its variation that is colour.

    A kernel's deviation from its mean splits into a grey part (the same in R, G and B) and the
    rest; this is the rest's share of the squared norm: 0 for a grey kernel, near 1 for one that
    only contrasts colours.
    """
    w = kernel.astype(np.float64)
    centred = w - w.mean(axis=(0, 1, 2), keepdims=True)
    grey = centred.mean(axis=2, keepdims=True)
    total = (centred**2).sum(axis=(0, 1, 2))
    return ((centred - grey) ** 2).sum(axis=(0, 1, 2)) / np.where(total > 0, total, 1.0)


def tile_grid(tiles: np.ndarray, columns: int, gap: int = TILE_GAP) -> np.ndarray:
    """(N, h, w, 3) uint8 tiles in rows of `columns`, `gap` pixels of background around each."""
    n, h, w, _ = tiles.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), BACKGROUND, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = tile
    return grid


def _stack(panels: list[np.ndarray], axis: int, gap: int = PANEL_GAP) -> np.ndarray:
    """Panels one after another along `axis` (0: below, 1: beside), padded to a common size."""
    other = 1 - axis
    extent = max(p.shape[other] for p in panels)
    out = []
    for i, panel in enumerate(panels):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[other] = (0, extent - panel.shape[other])
        out.append(np.pad(panel, pad, constant_values=255))
        if i < len(panels) - 1:
            shape = [0, 0, 3]
            shape[axis], shape[other] = gap, extent
            out.append(np.full(shape, BACKGROUND, np.uint8))
    return np.concatenate(out, axis=axis)


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    strip = Image.new("RGB", (panel.shape[1], LABEL_HEIGHT), BACKGROUND)
    ImageDraw.Draw(strip).text((TILE_GAP, 2), text, fill=(0, 0, 0), font=_font())
    return np.concatenate([np.asarray(strip), panel], axis=0)


def kernel_figure(
    kernel: np.ndarray, towers: int, *, zoom: int = 4, columns: int = 16, scale: str = "each"
) -> np.ndarray:
    """Figure 3: one captioned panel per tower (tower 1 on top), each kernel magnified `zoom` times.

    The output has `towers` panels of `tile_grid` size (kernels per tower in rows of `columns`),
    each under a LABEL_HEIGHT caption, PANEL_GAP rows apart.
    """
    pictures = kernel_images(kernel, scale).repeat(zoom, axis=1).repeat(zoom, axis=2)
    per_tower = len(pictures) // towers
    panels = []
    for t in range(towers):
        label = f"tower {t + 1}: kernels {t * per_tower + 1}-{(t + 1) * per_tower}" if towers > 1 else "conv1"
        panels.append(_caption(tile_grid(pictures[t * per_tower : (t + 1) * per_tower], columns), label))
    return _stack(panels, axis=0)


def kernels_command(source, compare, out: str, *, zoom: int, scale: str) -> np.ndarray:
    """Writes the kernel figure of `source` (and `compare` beside it); prints colour shares per tower.

    Each is a `loading.Network`, or a dict of `loading.load_network`'s arguments."""
    figures = []
    for item in [source] + ([compare] if compare else []):
        network = _network(item)
        kernel, towers = first_layer_kernel(network.params, network.config)
        name = network.path
        shares = colour_fraction(kernel).reshape(towers, -1).mean(axis=1)
        print(
            f"{name}: {kernel.shape[-1]} kernels {kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]}; "
            + ", ".join(f"tower {t + 1} colour share {s:.2f}" for t, s in enumerate(shares))
        )
        figures.append(
            _caption(kernel_figure(kernel, towers, zoom=zoom, scale=scale), os.path.basename(name.rstrip("/")))
        )
    figure = _stack(figures, axis=1)
    _save(figure, out)
    return figure


# ------------------------------------------------------------ Figure 4: neighbours and top-5


def _evenly_spaced(size: int, count: int) -> np.ndarray:
    """`count` indices spread over range(size) (all of them if count >= size or count == 0)."""
    if count <= 0 or count >= size:
        return np.arange(size)
    return np.linspace(0, size - 1, count).round().astype(np.int64)


def load_images(source: datasets.Source, indices: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre crops for display, resized uint8 images for the network, labels) of `source[indices]`.

    Unreadable files are left out.
    """
    shown, images, labels = [], [], []
    for image, label, ok in source.examples(indices).as_numpy_iterator():
        if ok:
            start = (image.shape[0] - crop) // 2
            shown.append(image[start : start + crop, start : start + crop])
            images.append(image)
            labels.append(label)
    if not shown:
        raise ValueError("none of the chosen images could be read")
    return np.stack(shown), np.stack(images), np.asarray(labels)


def make_features_fn(network: loading.Network):
    """Jitted `(params, uint8 resized images) -> (probabilities, fc7 features)` of the centre crop,
    as evaluation takes it, dropout off."""
    crop = network.config.model.image_size

    def features(params, images):
        inputs = steps.test_crops(images, network.normalisation, crop, ten_crop=False)[:, 0]
        logits, state = network.model.apply({"params": params}, inputs, mutable=["intermediates"])
        return jax.nn.softmax(logits), state["intermediates"]["fc7_out"][0]

    return jax.jit(features)


def batched_features(features_fn, params, inputs: np.ndarray, batch: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, fc7) of `inputs` in batches of `batch`, with progress on stderr."""
    probs, feats = [], []
    start = time.time()
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        # The last chunk is padded to the batch size so that the forward pass compiles once.
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        p, f = features_fn(params, padded)
        probs.append(np.asarray(p)[: len(chunk)]), feats.append(np.asarray(f, np.float32)[: len(chunk)])
        done = i + len(chunk)
        rate = done / max(time.time() - start, 1e-9)
        eta = progress.format_duration((len(inputs) - done) / rate)
        print(
            f"\r{what}: {done}/{len(inputs)} images, {rate:.0f} img/s, ETA {eta}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    return np.concatenate(probs), np.concatenate(feats)


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of the `k` rows of `pool` nearest each query row, by Euclidean distance,
    nearest first: shapes (Q, k)."""
    q, p = queries.astype(np.float64), pool.astype(np.float64)
    squared = (q**2).sum(1)[:, None] - 2 * q @ p.T + (p**2).sum(1)[None, :]
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(squared, order, axis=1).clip(0))


def _display_size(images: np.ndarray, minimum: int = 96) -> np.ndarray:
    """Small crops (e.g. 64 x 64 digits) magnified by a whole factor so that a figure is readable."""
    factor = -(-minimum // images.shape[1])
    return images.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else images


def _framed(image: np.ndarray, colour, width: int = 3) -> np.ndarray:
    framed = image.copy()
    framed[:width], framed[-width:], framed[:, :width], framed[:, -width:] = colour, colour, colour, colour
    return framed


def neighbour_figure(query_images, query_labels, pool_images, pool_labels, neighbours) -> np.ndarray:
    """Figure 4 (right): a row per query, the query then its neighbours nearest first, framed by
    whether their label is the query's. A wider gap separates the queries' column."""
    rows = []
    for q, row in enumerate(neighbours):
        framed = [_framed(pool_images[j], MATCH if pool_labels[j] == query_labels[q] else MISMATCH) for j in row]
        rows.append(_stack([tile_grid(query_images[q : q + 1], 1), tile_grid(np.stack(framed), len(row))], axis=1))
    return _stack(rows, axis=0, gap=0)


def neighbours_command(source, out: str, *, queries: int, neighbours: int, max_pool: int, batch: int) -> dict:
    """Writes the neighbour grid; returns {"agreement": share of neighbours with the query's label, ...}."""
    network = _network(source)
    config, crop = network.config, network.config.model.image_size
    data = datasets.create_data(config.data, config.model.num_classes)
    features_fn = make_features_fn(network)
    q_shown, q_inputs, q_labels = load_images(data.eval, _evenly_spaced(data.eval.size, queries), crop)
    everything = np.arange(data.train.size)
    pool_indices = np.sort(np.random.default_rng(0).permutation(data.train.size)[:max_pool]) if max_pool else everything
    p_shown, p_inputs, p_labels = load_images(data.train, pool_indices, crop)
    _, q_feats = batched_features(features_fn, network.params, q_inputs, batch, "queries")
    _, p_feats = batched_features(features_fn, network.params, p_inputs, batch, "training images")
    order, distances = nearest_neighbours(q_feats, p_feats, min(neighbours, len(p_feats)))
    figure = neighbour_figure(_display_size(q_shown), q_labels, _display_size(p_shown), p_labels, order)
    _save(figure, out)
    agreement = float((p_labels[order] == q_labels[:, None]).mean())
    print(
        f"{len(q_labels)} queries against {len(p_labels)} training images: "
        f"{agreement:.1%} of neighbours share the query's label; median distance {np.median(distances):.3g}"
    )
    return {"agreement": agreement, "queries": len(q_labels), "pool": len(p_labels), "figure": figure}


def prediction_panel(image: np.ndarray, top: list[tuple[int, float]], names: list[str], label: int) -> np.ndarray:
    """One cell of Figure 4 (left): the image, its true class, and a bar per top class (true one red)."""
    font, line, text_width, bar_width = _font(), 14, 150, 70
    width = max(image.shape[1], text_width + bar_width)
    cell = Image.new("RGB", (width, image.shape[0] + line * (len(top) + 1) + 4), BACKGROUND)
    cell.paste(Image.fromarray(image), ((width - image.shape[1]) // 2, 0))
    draw = ImageDraw.Draw(cell)
    y = image.shape[0] + 2
    draw.text((2, y), f"true: {_short(names[label])}", fill=(0, 0, 0), font=font)
    for cls, p in top:
        y += line
        draw.text((2, y), _short(names[cls], 20), fill=(0, 0, 0), font=font)
        draw.text((text_width - 36, y), f"{p:4.0%}", fill=(0, 0, 0), font=font)
        colour = MISMATCH if cls == label else (90, 120, 200)
        draw.rectangle((text_width, y + 3, text_width + max(1, round(p * (bar_width - 2))), y + line - 3), fill=colour)
    return np.asarray(cell)


def _short(name: str, limit: int = 28) -> str:
    """The first lemma of a class name ("tabby" of "tabby, tabby cat"), at most `limit` characters."""
    first = name.split(",")[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def predictions_command(source, out: str, *, images: int, columns: int, batch: int) -> dict:
    """Writes the top-5 panel of `images` evaluation images; returns their top-5 (class, probability)."""
    network = _network(source)
    config, names = network.config, network.class_names
    data = datasets.create_data(config.data, config.model.num_classes)
    shown, inputs, labels = load_images(data.eval, _evenly_spaced(data.eval.size, images), config.model.image_size)
    probs, _ = batched_features(make_features_fn(network), network.params, inputs, batch, "images")
    tops = [[(int(c), float(p[c])) for c in np.argsort(-p, kind="stable")[:5]] for p in probs]
    cells = [prediction_panel(img, top, names, int(y)) for img, top, y in zip(_display_size(shown), tops, labels)]
    rows = [_stack(cells[i : i + columns], axis=1, gap=TILE_GAP * 4) for i in range(0, len(cells), columns)]
    _save(_stack(rows, axis=0), out)
    hits = np.mean([any(c == y for c, _ in top) for top, y in zip(tops, labels)])
    print(f"{len(tops)} images: true class in the top 5 for {hits:.0%}")
    return {"top5": tops, "labels": labels}


def _save(figure: np.ndarray, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(figure).save(out)
    print(f"wrote {out} ({figure.shape[1]} x {figure.shape[0]})")


COMMANDS = ("kernels", "neighbours", "predictions")


def _network(source) -> loading.Network:
    """A `loading.Network` as it is; a dict of `loading.load_network`'s arguments loaded."""
    if isinstance(source, loading.Network):
        return source
    source = dict(source)
    if "config_path" in source:  # the older name of `config`
        source["config"] = source.pop("config_path")
    return loading.load_network(**source)


def _compare_source(path: str | None, allow_pickle: bool) -> dict | None:
    """A second network to draw: a workdir (a directory) or a weights file, each with its own config."""
    if not path:
        return None
    if os.path.isdir(path):
        return dict(workdir=path)
    return dict(weights=path, allow_pickle=allow_pickle)


def main(argv, source: loading.NetworkSource):
    f = source.flag_values
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise cli.UserError(f"give one command, {' | '.join(COMMANDS)} (got {' '.join(argv[1:]) or 'none'})")
    command = argv[1]
    network = source.network()
    out = f.out or os.path.join(f.workdir or ".", f"{command}.png")
    if command == "kernels":
        kernels_command(network, _compare_source(f.compare, f.allow_pickle), out, zoom=f.zoom, scale=f.scale)
    elif command == "neighbours":
        neighbours_command(network, out, queries=f.queries, neighbours=f.neighbours, max_pool=f.max_pool, batch=f.batch)
    else:
        predictions_command(network, out, images=f.images, columns=f.columns, batch=f.batch)


def define_flags(source: loading.NetworkSource) -> None:
    fv = source.flag_values
    flags.DEFINE_string("out", None, "PNG to write; default: <workdir or .>/<command>.png.", flag_values=fv)
    flags.DEFINE_string("compare", None, "kernels: a second workdir or weights file, drawn beside.", flag_values=fv)
    flags.DEFINE_integer("zoom", 4, "kernels: magnification of each kernel.", flag_values=fv)
    flags.DEFINE_enum(
        "scale", "each", ["each", "all"], "kernels: contrast per kernel, or one for the layer.", flag_values=fv
    )
    flags.DEFINE_integer("queries", 6, "neighbours: query images, spread over the evaluation split.", flag_values=fv)
    flags.DEFINE_integer("neighbours", 5, "neighbours: neighbours shown per query.", flag_values=fv)
    flags.DEFINE_integer(
        "max_pool", 10000, "neighbours: training images searched (a fixed subset); 0: all.", flag_values=fv
    )
    flags.DEFINE_integer("images", 8, "predictions: evaluation images shown.", flag_values=fv)
    flags.DEFINE_integer("columns", 4, "predictions: images per row.", flag_values=fv)
    flags.DEFINE_integer("batch", 64, "Images per forward pass.", flag_values=fv)


def run_command_line(argv: list[str]) -> int:
    """`python -m alexnet_jax.visualize ARGV` in this process; returns the exit code."""
    return loading.run_tool(define_flags, main, ["alexnet_jax.visualize", *argv])


if __name__ == "__main__":
    _SOURCE = loading.NetworkSource()
    define_flags(_SOURCE)
    _SOURCE.run(lambda argv: main(argv, _SOURCE))
