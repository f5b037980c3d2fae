"""How many images per second the training loop can drive when the device's work is negligible.

    python bench/loop.py [--batches=128,256] [--sizes=8,224] [--steps=400] [--out=bench/results/loop.json]

Runs `train.train_and_evaluate`, the loop users run (schedule, dispatch, prefetch to the device,
the non-finite guard, logging), with a network of one 1 x 1 convolution and one dense layer, on
synthetic uint8 batches made once and cycled, so that neither the network nor the input pipeline
limits it. Its rate is the loop's own `images_per_second`, logged every 100 steps, median over the
intervals after the first. At 8 x 8 pixels this is the loop's overhead; at 224 x 224 it includes
copying each uint8 batch to the device and normalising it there (on a CPU, the device is the host).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.networks import layers
from configs import smoke

LOG_EVERY = 100


class TinyNet(nn.Module):
    """Stands in for AlexNet in the loop: the same interface, almost no arithmetic."""

    num_classes: int = 4
    dtype: object = jnp.float32
    model_axis: str | None = None
    data_axis: str | None = None

    def setup(self):
        self.conv1 = layers.Conv(2, kernel_size=1)
        self.fc8 = layers.Dense(self.num_classes)

    def features(self, images):
        return self.conv1(images[:, ::8, ::8, :]).mean(axis=(1, 2), keepdims=True)

    def classifier(self, maps, train: bool = False):
        del train
        return self.fc8(maps.reshape(maps.shape[0], -1)).astype(jnp.float32)

    def __call__(self, images, train: bool = False):
        return self.classifier(self.features(images), train)


def synthetic_batches(batch: int, size: int, count: int = 4):
    rng = np.random.default_rng(0)
    made = [
        {
            "images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "labels": rng.integers(0, 4, batch).astype(np.int32),
            "weight": np.ones(batch, np.float32),  # every example readable, as the pipeline marks them
            "window": np.zeros((batch, 3), np.int32),
            "lighting": rng.normal(0, 5, (batch, 3)).astype(np.float32),
        }
        for _ in range(count)
    ]
    return itertools.cycle(made)


def loop_rate(batch: int, size: int, steps: int) -> float:
    config = smoke.get_config()
    config.data.resize_size = config.model.image_size = size
    # A few made-up images set the epoch's length (the batches themselves are synthetic_batches').
    config.data.fake_train_size, config.data.fake_eval_size = batch * 4, batch
    config.optim.batch_size, config.eval.batch_size = batch, batch
    config.parallel.data, config.eval.ten_crop, config.train.num_epochs = 1, False, steps // 4
    config.train.eval_every_epochs = config.train.num_epochs
    config.train.log_every_steps, config.train.checkpoint_every_steps = LOG_EVERY, 0
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(config, workdir, model=TinyNet(), batches=synthetic_batches(batch, size))
        rates = [r["images_per_second"] for r in workdir_lib.read_metrics(workdir) if r["kind"] == "train"]
    return statistics.median(rates[1:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="128,256")
    parser.add_argument("--sizes", default="8,224", help="image sides: 8 (the loop alone) and the paper's 224")
    parser.add_argument("--steps", type=int, default=400, help="steps per run (logged every 100)")
    parser.add_argument("--out", default="bench/results/loop.json")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'batch':>5} {'pixels':>7} {'img/s':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            rate = loop_rate(batch, size, args.steps)
            rows.append({"batch": batch, "image_size": size, "images_per_s": round(rate)})
            print(f"{batch:>5} {size:>4}^2 {rate:>10,.0f}", flush=True)
    result = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "args": vars(args),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
