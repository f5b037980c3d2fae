"""The layer table: the module's own figures next to the paper's, as text and as JSON."""

import json
import os
import subprocess
import sys

from alexnet_jax import summary
from alexnet_jax.networks import alexnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_table_matches_the_paper():
    table = summary.layer_table(alexnet.AlexNet(), 224)
    assert table["total_params"] == 60_965_224
    rows = {r["name"]: r for r in table["layers"]}
    assert all(r["params"] == r["paper_params"] for r in table["layers"])
    assert rows["conv1"]["output_shape"] == [55, 55, 96] and rows["conv1"]["neurons"] == 290_400
    assert table["total_neurons"] == 659_272
    assert rows["conv1"]["macs"] == 55 * 55 * 96 * 11 * 11 * 3
    assert rows["conv2"]["macs"] == 27 * 27 * 256 * 5 * 5 * 48  # grouped: 48 input maps per kernel
    assert round(table["total_macs"] / 1e6, 1) == 724.4
    # Towers talk at conv3, fc6, fc7, fc8 only (float32 bytes per image, each way).
    sent = {r["name"]: r["sent_bytes"] for r in table["layers"]}
    assert sent == {
        "conv1": 0,
        "conv2": 0,
        "conv3": 13 * 13 * 128 * 4,
        "conv4": 0,
        "conv5": 0,
        "fc6": 6 * 6 * 128 * 4,
        "fc7": 2048 * 4,
        "fc8": 2048 * 4 + 500 * 4,
    }
    text = summary.format_table(table)
    assert "253,440 = 55 x 48 x 96, a slip" in text


def test_torchvision_table_has_no_tower_traffic():
    table = summary.layer_table(alexnet.AlexNet(variant="torchvision"), 224)
    assert table["total_params"] == 61_100_840 and table["total_sent_bytes"] == 0


def test_cli_json():
    out = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.summary", "--config=configs/paper.py", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    table = json.loads(out)
    assert table["total_params"] == 60_965_224
    assert [layer["name"] for layer in table["layers"]] == list(alexnet.LAYER_NAMES)
    assert {"name", "output_shape", "params", "macs"} <= table["layers"][0].keys()
