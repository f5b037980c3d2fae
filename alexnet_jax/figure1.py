"""Figure 1 of the paper as an experiment: how many epochs a four-layer convolutional network needs to
reach 25 % training error with ReLUs and with tanh units, each at its own fastest learning rate.

Section 3.1: "a four-layer convolutional neural network with ReLUs (solid line) reaches a 25 %
training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons
(dashed line). The learning rates for each network were chosen independently to make training as
fast as possible. No regularization of any kind was employed."

The paper does not describe the network beyond "four-layer". Its authors' public code, cuda-convnet,
ships two CIFAR-10 nets: `example-layers/layers-18pct.cfg` (three 5 x 5 convolutions and one fully
connected layer: four layers with weights) and `layers-80sec.cfg` (the same with a second fully
connected layer: five). This module takes layers-18pct, the four-layer one, as the likeliest:

    conv1 32 5x5 pad 2, max-pool 3/2, activation        (cuda-convnet applies pool1's neuron after
    conv2 32 5x5 pad 2, activation, average-pool 3/2     the pooling; for a monotonic activation
    conv3 64 5x5 pad 2, activation, average-pool 3/2     it is the same as before it)
    fc10, softmax

with its initialisation (weights ~ N(0, sigma^2), sigma 0.0001 for conv1 and 0.01 for the others;
biases 0), its momentum 0.9 and its biases' learning rate twice the weights'; and without its two
response-normalisation layers and its weight decay (no regularisation of any kind). Pools cover
windows that overhang the bottom and right edges as cuda-convnet's do (32 -> 16 -> 8 -> 4), an
average over the pixels inside the image. The activation is ReLU or tanh, everything else equal: the
same seed gives both networks the same initial weights and the same batches.

Data: scikit-learn's handwritten digits (shipped with the package, no download), the same training
split as the `digits` source (every 5th image held out: 1,437 training images), scaled to 0-255,
upscaled bilinearly from 8 x 8 to CIFAR-10's 32 x 32, as 3 equal channels, minus the training mean
image (cuda-convnet's CIFAR-10 input: 0-255 pixels minus the mean). No augmentation.

Training error is measured as the figure plots it, over the whole training set: the top-1 error of
all 1,437 training images under the current weights (the network has no dropout or other
train-only behaviour, so there is no separate evaluation mode), at step 0 and every
1 / `evals_per_epoch` of an epoch. When a measurement is at or below 25 % for the first time, the
steps since the previous measurement are replayed (the same batches) and measured one by one, so
"steps to 25 %" is the first step after which the training error was at most 25 % (a dip below 25 %
and back between two measurements that are both above it would go unseen).

The learning-rate rule (`choose_rate`): for each activation, every rate of one grid is trained with
every seed until the training error reaches 25 % or `max_epochs` pass; the chosen rate is the one
with the fewest epochs to 25 %, averaged over the seeds, among the rates with which every seed got
there (ties: the smaller rate). A run whose loss turns non-finite stops and counts as never.
The chosen rate's runs then continue to `epochs` epochs for the figure (from step 0 again: the same
seed gives the same run, step for step).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import optim

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}
IMAGE_SIZE = 32  # CIFAR-10's


@dataclasses.dataclass(frozen=True)
class Settings:
    """The experiment's configuration (every field has a command-line flag in `sweep.py figure1`)."""

    rates: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # the sweep's grid, half-decades
    seeds: int = 3  # seeds 0 .. seeds-1 of every (activation, rate)
    target: float = 0.25  # training error to reach (the figure's 25 %)
    max_epochs: float = 3.0  # the sweep's budget: a rate not there by then counts as never
    epochs: float = 3.0  # the figure's length, for the chosen rates
    batch_size: int = 32  # 44 steps per epoch of the 1,437 training digits
    evals_per_epoch: int = 11  # whole-training-set measurements per epoch (every 4 steps)
    momentum: float = 0.9  # layers-18pct's momW / momB
    bias_lr_multiplier: float = 2.0  # layers-18pct: epsB = 2 epsW

    def check(self, training_images: int = 1437) -> None:
        """Raises ValueError, naming the setting, on one that cannot work."""
        if not self.rates or not all(math.isfinite(r) and r > 0 for r in self.rates):
            raise ValueError(f"rates {self.rates} must be one or more positive numbers")
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates {self.rates} repeat a rate")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be at least 1")
        if not 0 < self.target < 1:
            raise ValueError(f"target={self.target} must be a training error between 0 and 1")
        if not (self.max_epochs > 0 and self.epochs > 0):
            raise ValueError(f"max_epochs={self.max_epochs} and epochs={self.epochs} must be positive")
        if not 1 <= self.batch_size <= training_images:
            raise ValueError(f"batch_size={self.batch_size} must be 1 to {training_images} (the training images)")
        if self.evals_per_epoch < 1:
            raise ValueError(f"evals_per_epoch={self.evals_per_epoch} must be at least 1")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")


class FourLayerNet(nn.Module):
    """cuda-convnet's layers-18pct CIFAR-10 net without response normalisation (module docstring)."""

    activation: str = "relu"
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]

        def conv(features, std, name):
            return nn.Conv(features, (5, 5), padding=2, kernel_init=nn.initializers.normal(std), name=name)

        overhang = ((0, 1), (0, 1))  # 3/2 windows over an even side: the last one overhangs by a pixel
        x = conv(32, 1e-4, "conv1")(images)
        x = act(nn.max_pool(x, (3, 3), (2, 2), overhang))
        x = act(conv(32, 0.01, "conv2")(x))
        x = nn.avg_pool(x, (3, 3), (2, 2), overhang, count_include_pad=False)
        x = act(conv(64, 0.01, "conv3")(x))
        x = nn.avg_pool(x, (3, 3), (2, 2), overhang, count_include_pad=False)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="fc10")(x)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,437 training digits as float32 (N, 32, 32, 3), 0-255 minus the mean image, and labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    train = np.arange(len(digits.images)) % 5 != 0  # the `digits` source's split (datasets.load_digits)
    gray = digits.images[train].astype(np.float32) * (255.0 / 16.0)
    big = jax.image.resize(jnp.asarray(gray), (len(gray), IMAGE_SIZE, IMAGE_SIZE), "bilinear")
    images = np.repeat(np.asarray(big)[..., None], 3, axis=-1)
    return images - images.mean(axis=0), digits.target[train].astype(np.int32)


@dataclasses.dataclass
class Run:
    """One network trained at one rate with one seed: its training-error curve and when it reached the target."""

    activation: str
    rate: float
    seed: int
    steps_per_epoch: int
    curve: list  # [step, training error] at every measurement
    reached: int | None = None  # first measured step with training error <= target
    diverged: int | None = None  # step whose loss was not finite
    seconds: float = 0.0

    @property
    def epochs_to_target(self) -> float | None:
        return None if self.reached is None else self.reached / self.steps_per_epoch

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _optimizer(rule: tuple[float, float]):
    momentum, bias_lr_multiplier = rule
    return optim.paper_sgd(momentum=momentum, weight_decay=0.0, bias_lr_multiplier=bias_lr_multiplier)


# Compiled once per activation and update rule (static arguments), for every rate and seed.
@functools.partial(jax.jit, static_argnames=("activation", "rule"))
def _init(key: jax.Array, *, activation: str, rule: tuple[float, float]):
    params = FourLayerNet(activation).init(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"]
    return params, _optimizer(rule).init(params)


@functools.partial(jax.jit, static_argnames=("activation", "rule"))
def _train_step(params, opt_state, images, labels, rate, *, activation: str, rule: tuple[float, float]):
    def loss_fn(p):
        logits = FourLayerNet(activation).apply({"params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = _optimizer(rule).update(grads, opt_state, params, learning_rate=rate)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("activation",))
def _training_error(params, images, labels, *, activation: str):
    logits = FourLayerNet(activation).apply({"params": params}, images)
    return jnp.mean(jnp.argmax(logits, -1) != labels)


def train(
    activation: str,
    rate: float,
    seed: int,
    settings: Settings,
    data: tuple[np.ndarray, np.ndarray],
    *,
    epochs: float,
    stop_at_target: bool,
) -> Run:
    """Trains one network for `epochs` epochs (or until the target, with `stop_at_target`).

    Deterministic per seed: the initial weights come from `jax.random.key(seed)` and epoch e's order
    from `np.random.default_rng([seed, e])` (the last partial batch of an epoch is dropped).
    """
    images, labels = data
    steps_per_epoch = len(labels) // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {settings.batch_size} is larger than the {len(labels)} training images")
    measure_every = max(1, steps_per_epoch // settings.evals_per_epoch)
    total = int(round(epochs * steps_per_epoch))
    run = Run(activation, rate, seed, steps_per_epoch, curve=[])
    started = time.time()
    rule = (settings.momentum, settings.bias_lr_multiplier)
    all_images, all_labels = jnp.asarray(images), jnp.asarray(labels)

    def step_from(state, step):
        """The state after `step` (1-based) from the state after step - 1."""
        epoch, position = divmod(step - 1, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        batch = order[position * settings.batch_size : (position + 1) * settings.batch_size]
        params, opt_state, loss = _train_step(
            *state, images[batch], labels[batch], np.float32(rate), activation=activation, rule=rule
        )
        return (params, opt_state), float(loss)

    def error(state):
        return float(_training_error(state[0], all_images, all_labels, activation=activation))

    state = _init(jax.random.key(seed), activation=activation, rule=rule)
    run.curve.append([0, error(state)])
    measured = (0, state)  # the last measurement's step and state
    for step in range(1, total + 1):
        state, loss = step_from(state, step)
        if step % measure_every and step != total:
            continue
        if not math.isfinite(loss):
            run.diverged = step
            break
        now = error(state)
        if run.reached is None and now <= settings.target:
            # The first measurement at or below the target: replay the steps since the previous
            # measurement one by one (the same batches), so that the count is exact.
            between, replayed = measured[1], measured[0] + 1
            for replayed in range(measured[0] + 1, step):
                between, _ = step_from(between, replayed)
                run.curve.append([replayed, error(between)])
                if run.curve[-1][1] <= settings.target:
                    break
            run.reached = replayed if run.curve[-1][1] <= settings.target else step
        run.curve.append([step, now])
        measured = (step, state)
        if stop_at_target and run.reached is not None:
            break
    run.seconds = time.time() - started
    return run


def choose_rate(runs: list[Run]) -> tuple[float | None, dict[float, float | None]]:
    """The rate with the fewest epochs to the target, averaged over seeds, among the rates with which
    every seed reached it (ties: the smaller rate); None if no rate did. Also each rate's mean
    epochs (None where some seed never reached the target)."""
    by_rate: dict[float, list[Run]] = {}
    for run in runs:
        by_rate.setdefault(run.rate, []).append(run)
    means = {
        rate: (
            float(np.mean([r.epochs_to_target for r in group])) if all(r.reached is not None for r in group) else None
        )
        for rate, group in sorted(by_rate.items())
    }
    finished = [(mean, rate) for rate, mean in means.items() if mean is not None]
    return (min(finished)[1] if finished else None), means


# ---------------------------------------------------------------------------------- the experiment


class NoRateReached(RuntimeError):
    """No rate of the grid brought every seed to the target within the sweep's budget."""


def _stored_or_trained(path: str, key: dict, train_run: Callable[[], Run], log: Callable[[str], None]) -> Run:
    """The run stored at `path` if it was made with the same `key` (every setting it depends on),
    else a fresh one, stored there: an interrupted experiment resumes run by run."""
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.pop("key", None) == key:
            log(f"done already: {path}")
            return Run(**stored)
    run = train_run()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({**run.to_json(), "key": key}, f)
    os.replace(path + ".tmp", path)
    if run.reached is not None:
        outcome = f"{key['target']:.0%} training error at step {run.reached} ({run.epochs_to_target:.3g} epochs)"
    else:
        outcome = f"diverged at step {run.diverged}" if run.diverged else f"not at {key['target']:.0%}"
    log(f"{run.activation} rate {run.rate:g} seed {run.seed}: {outcome}; {run.seconds:.0f} s")
    return run


def run_experiment(
    settings: Settings, root: str, log: Callable[[str], None] = print, data: tuple | None = None
) -> dict:
    """The sweep, the chosen rates' runs to `settings.epochs`, and root/figure1.{md,png,json}.

    Returns the summary (see `summarise`). Raises NoRateReached, every run kept, when an activation
    has no rate with which every seed reached the target. `data` (images, labels) replaces the
    digits (`load_digits`), e.g. a few of them for a quick check.
    """
    data = load_digits() if data is None else data
    key = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("rates", "seeds", "epochs")}

    def runs(phase, activation, rates, epochs):
        return [
            _stored_or_trained(
                os.path.join(root, phase, activation, f"rate={rate:g}", f"seed={seed}.json"),
                {**key, "phase": phase, "epochs": epochs},
                lambda rate=rate, seed=seed: train(
                    activation,
                    rate,
                    seed,
                    settings,
                    data,
                    epochs=epochs,
                    stop_at_target=phase == "sweep",
                ),
                log,
            )
            for rate in rates
            for seed in range(settings.seeds)
        ]

    sweep = {activation: runs("sweep", activation, settings.rates, settings.max_epochs) for activation in ACTIVATIONS}
    chosen = {activation: choose_rate(activation_runs)[0] for activation, activation_runs in sweep.items()}
    missing = [activation for activation, rate in chosen.items() if rate is None]
    if missing:
        raise NoRateReached(
            f"no rate of {', '.join(f'{r:g}' for r in settings.rates)} brought every seed of "
            f"{' and '.join(missing)} to {settings.target:.0%} training error within {settings.max_epochs:g} "
            f"epochs; raise --max_epochs or widen --rates (the runs so far are kept in {root})"
        )
    curves = {activation: runs("curves", activation, [chosen[activation]], settings.epochs) for activation in chosen}
    summary = summarise(settings, sweep, chosen, curves)
    with open(os.path.join(root, "figure1.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(root, "figure1.md"), "w") as f:
        f.write(markdown(summary))
    plot(summary, os.path.join(root, "figure1.png"))
    log(f"wrote {os.path.join(root, 'figure1.md')}, figure1.png and figure1.json")
    return summary


def summarise(settings: Settings, sweep: dict, chosen: dict, curves: dict) -> dict:
    """Everything the table and the plot show, as plain numbers.

    Steps and epochs to the target are the sweep's runs at the chosen rate; the curves are the same
    runs (the same seeds and rate) continued to `settings.epochs`.
    """
    grid = {}
    for activation, activation_runs in sweep.items():
        _, means = choose_rate(activation_runs)
        grid[activation] = {
            f"{rate:g}": {
                "mean_epochs": mean,
                "never": sum(r.reached is None for r in activation_runs if r.rate == rate),
                "diverged": sum(r.diverged is not None for r in activation_runs if r.rate == rate),
            }
            for rate, mean in means.items()
        }
    results = {}
    for activation, rate in chosen.items():
        best = sorted((r for r in sweep[activation] if r.rate == rate), key=lambda r: r.seed)
        results[activation] = {
            "rate": rate,
            "at_grid_edge": rate in (min(settings.rates), max(settings.rates)),
            "steps": [r.reached for r in best],
            "epochs": [r.epochs_to_target for r in best],
            # Steps at which a figure's run turned non-finite after reaching the target (None: never).
            "diverged_later": [r.diverged for r in sorted(curves[activation], key=lambda r: r.seed)],
        }
    ratios = [t / r for t, r in zip(results["tanh"]["epochs"], results["relu"]["epochs"])]
    return {
        "settings": dataclasses.asdict(settings),
        "steps_per_epoch": sweep["relu"][0].steps_per_epoch,
        "grid": grid,
        "results": results,
        "ratios": ratios,
        "curves": {a: [r.curve for r in sorted(runs, key=lambda r: r.seed)] for a, runs in curves.items()},
    }


def _spread(values: list[float], digits: int = 2) -> str:
    mean = np.mean(values)
    return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def markdown(summary: dict) -> str:
    """The sweep and the result as Markdown tables."""
    settings, results = summary["settings"], summary["results"]
    target = f"{settings['target']:.0%}"
    lines = [
        f"# Figure 1 on the digits: epochs to {target} training error, ReLU against tanh",
        "",
        f"cuda-convnet's layers-18pct net without normalisation or weight decay, batch {settings['batch_size']} "
        f"({summary['steps_per_epoch']} steps per epoch), training error over the whole training set every "
        f"1/{settings['evals_per_epoch']} epoch, seeds 0-{settings['seeds'] - 1}.",
        "",
        f"## The learning-rate sweep: mean epochs to {target} (each seed until it got there, at most "
        f"{settings['max_epochs']:g} epochs)",
        "",
        "| learning rate | " + " | ".join(summary["grid"]) + " |",
        "|---|" + "---|" * len(summary["grid"]),
    ]
    rates = sorted({rate for cells in summary["grid"].values() for rate in cells}, key=float)
    for rate in rates:
        cells = []
        for activation, grid in summary["grid"].items():
            cell = grid[rate]
            text = f"{cell['mean_epochs']:.2f}" if cell["mean_epochs"] is not None else f"never ({cell['never']} seeds)"
            if cell["diverged"]:
                text += f", {cell['diverged']} diverged"
            cells.append(f"**{text}**" if float(rate) == results[activation]["rate"] else text)
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## At each activation's fastest rate: steps (epochs) to {target} training error",
        "",
        "| seed | " + " | ".join(f"{a} (rate {r['rate']:g})" for a, r in results.items()) + " | tanh / ReLU |",
        "|---|" + "---|" * (len(results) + 1),
    ]
    for seed, ratio in enumerate(summary["ratios"]):
        cells = [f"{r['steps'][seed]} ({r['epochs'][seed]:.2f})" for r in results.values()]
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    mean_cells = [f"{_spread(r['steps'], 0)} ({_spread(r['epochs'])})" for r in results.values()]
    lines.append("| mean ± sd | " + " | ".join(mean_cells) + f" | {_spread(summary['ratios'])} |")
    edges = [a for a, r in results.items() if r["at_grid_edge"]]
    if edges:
        lines += ["", f"The rate chosen for {' and '.join(edges)} is at the edge of the grid: widen --rates."]
    for activation, result in results.items():
        for seed, step in enumerate(result["diverged_later"]):
            if step is not None:
                lines += [
                    "",
                    f"{activation}, seed {seed}: the loss turned non-finite at step {step}, after the target.",
                ]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str):
    """Training error against epochs, ReLU solid and tanh dashed, one line per seed, as Figure 1;
    written to `path` and returned (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.2))
    axes = figure.subplots()
    styles = {"relu": ("-", "ReLU"), "tanh": ("--", "tanh")}
    per_epoch = summary["steps_per_epoch"]
    for activation, curves in summary["curves"].items():
        style, name = styles[activation]
        for seed, curve in enumerate(curves):
            steps, errors = np.asarray(curve).T
            label = f"{name} (learning rate {summary['results'][activation]['rate']:g})" if seed == 0 else None
            axes.plot(steps / per_epoch, errors, style, color="black", linewidth=1.2, alpha=0.8, label=label)
    target = summary["settings"]["target"]
    axes.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("Epochs")
    axes.set_ylabel("Training error rate")
    axes.set_ylim(0, 0.95)
    axes.set_xlim(0, summary["settings"]["epochs"])
    axes.set_title(
        f"Four-layer net on the digits, {len(next(iter(summary['curves'].values())))} seeds each", fontsize=10
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return figure
