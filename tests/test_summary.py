"""The layer table: the module's own figures next to the paper's, as text and as JSON, for the
network any config, override or weights file describes."""

import json

from alexnet_jax import summary
from alexnet_jax.networks import alexnet
from configs import paper


def test_table_matches_the_paper():
    table = summary.table_for(paper.get_config())
    assert table["total_params"] == 60_965_224
    rows = {r["name"]: r for r in table["layers"]}
    assert [r["name"] for r in table["layers"]] == [
        "input", "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8"
    ]  # fmt: skip
    assert all(rows[name]["params"] == rows[name]["paper_params"] for name in alexnet.LAYER_NAMES)
    assert rows["conv1"]["output_shape"] == [55, 55, 96] and rows["conv1"]["values"] == 290_400
    assert table["total_neurons"] == 659_272
    assert rows["conv1"]["macs"] == 55 * 55 * 96 * 11 * 11 * 3
    assert rows["conv2"]["macs"] == 27 * 27 * 256 * 5 * 5 * 48  # grouped: 48 input maps per kernel
    assert round(table["total_macs"] / 1e6, 1) == 724.4
    # Towers talk at conv3, fc6, fc7, fc8 only (float32 bytes per image, each way).
    sent = {name: rows[name]["sent_bytes"] for name in alexnet.LAYER_NAMES}
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
    # The one difference from Figure 2 is flagged and explained.
    assert [(d["row"], d["column"]) for d in table["differences"]] == [("conv1", "neurons")]
    text = summary.format_table(table)
    assert "253,440 = 55 x 48 x 96, a slip" in text and "253,440*" in text


def test_torchvision_table_has_no_tower_traffic_and_no_paper_columns():
    config = paper.get_config()
    config.model.variant = "torchvision"
    table = summary.table_for(config)
    assert table["total_params"] == 61_100_840 and table["total_sent_bytes"] == 0 and "reference" not in table


def test_cli_json_and_overrides(capsys):
    assert summary.run_command_line(["--json"]) == 0  # the paper's config when nothing is named
    table = json.loads(capsys.readouterr().out)
    assert table["total_params"] == 60_965_224
    assert [row["name"] for row in table["layers"] if row["params"]] == list(alexnet.LAYER_NAMES)
    assert summary.run_command_line(["--config=configs/paper.py", "--config.model.variant=one_tower", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 59_798_312
    assert summary.run_command_line(["--config.model.varient=one_tower"]) == 2
    assert "unknown config field 'model.varient'" in capsys.readouterr().err
