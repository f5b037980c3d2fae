"""The benchmarks: bench/gpu.sh's reduced form gives every kind of row, bench/gpu_profile.py's its
tables; bench/torch_compare.py's PyTorch network computes ours (PyTorch comes with
requirements-test.txt); their Markdown rows carry the measured figures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, bench_module, cli_env, labels_with_hits


def test_the_gpu_profile_runs_in_its_reduced_form(capsys):
    """bench/gpu_profile.py on a CPU at 64 px (the device run is 224 px): the step's time by layer and
    direction and by kernel, the busy share, the memory and the two ceilings, so that it cannot rot
    between the sessions that have a GPU. In this process, which has JAX imported already."""
    result = bench_module("gpu_profile").main(["--reduced", "--markdown"])
    assert [p["batch"] for p in result["profiles"]] == [8] and result["profiles"][0]["images_per_s"] > 0
    out = capsys.readouterr().out
    assert "**Batch 8**" in out and "the device busy" in out and "memory: arguments" in out
    assert "| layer | direction | µs per step | share |" in out and "| kernel | calls per step |" in out
    layers = {
        tuple(cell.strip() for cell in line.split("|")[1:3]) for line in out.splitlines() if line.startswith("| conv")
    }
    assert {("conv1", "forward"), ("conv1", "backward"), ("conv5", "forward")} <= layers


def test_the_gpu_command_runs_in_its_reduced_form(tmp_path, monkeypatch, capsys):
    """Every kind of row (the implementation choices, training, the prepared copy) on a CPU, in seconds.

    The command's own process plans, starts the device probe as a child and collects, as on a GPU;
    each measurement runs through the child's own entry point (`--_one=SPEC`) in this process, which
    has JAX and TensorFlow imported already and compiles each program once (a child per row would
    import them again and compile what this process has cached)."""
    gpu = bench_module("gpu")
    children = []

    def measured_here(spec, timeout):
        capsys.readouterr()  # the plan's own lines so far
        assert gpu.main([f"--_one={json.dumps(spec)}"]) is None
        children.append(spec)
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(gpu, "_child", measured_here)
    out, table = tmp_path / "gpu.json", tmp_path / "BENCHMARKS.md"
    args = ["--reduced", "--choices=pool_gradient", f"--out={out}", f"--markdown={table}"]
    result = gpu.main(args)
    assert json.loads(out.read_text()) == result
    kinds = [(r["what"], r["change"]) for r in result["rows"]]
    assert kinds == [
        ("choice", ""),
        ("choice", "pool_gradient=xla"),
        ("train", result["rows"][2]["change"]),
        ("prepared", result["rows"][2]["change"]),
    ]
    assert children[-1].get("prepared")  # the last row fed by the input pipeline from the records prepare wrote
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["images_per_s"] > 0 and row["compile_s"] > 0 and row["loss_finite"]
    assert result["backend"] == "cpu" and result["matmul_tflops"]["float32"] > 0  # the probe, a child process
    text = table.read_text()
    assert "```bash\nbench/gpu.sh --reduced\n```" in text
    assert text.count("| jax | float32 | 4 |") == 4
    # The command itself: the script's environment and its arguments reach gpu.py.
    env = {**cli_env(devices=1), "PYTHON": sys.executable}
    done = subprocess.run(
        [os.path.join(ROOT, "bench", "gpu.sh"), "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "bench/gpu.sh --reduced" in done.stdout, done.stderr[-3000:]


@pytest.fixture(scope="module")
def bench():
    return bench_module("torch_compare")


def test_markdown_section_lists_every_row(bench):
    result = {
        "machine": dict(
            date="2026-11-23",
            cpu="Test CPU",
            cores=2,
            device="cpu",
            backend="cpu",
            jax="0",
            torch="0",
            torch_threads=2,
            python="3.11",
        ),
        "args": dict(
            batches="8",
            repeats=3,
            warmup=1,
            dtype="float32",
            torch_modes="eager",
            what="train",
            pause=1.0,
            micro_batch=-1,
        ),
        "rows": [
            dict(
                what="train",
                batch=8,
                framework="jax",
                micro_batch=4,
                images_per_s=12.5,
                step_median_s=0.64,
                compile_s=3.0,
                peak_memory_mb=1500.0,
                tflops=0.05,
                vs_fastest_torch=1.25,
            ),
            dict(
                what="train",
                batch=8,
                framework="torch eager",
                micro_batch=None,
                images_per_s=10.0,
                step_median_s=0.8,
                compile_s=1.0,
                peak_memory_mb=None,
                tflops=0.04,
            ),
        ],
    }
    text = bench.markdown_section(result)
    assert "python bench/torch_compare.py --batches=8 --repeats=3" in text and "Test CPU, 2 cores" in text
    assert "| train | 8 | jax (micro-batch 4) | 12.5 | 0.6400 | 3.0 | 1500 | 0.050 | **1.25** |" in text
    assert "| train | 8 | torch eager | 10.0 | 0.8000 | 1.0 | - | 0.040 |  |" in text


def test_the_pytorch_network_computes_ours(bench):
    import torch  # requirements-test.txt: the comparison runs wherever the tests do, never skipped

    ours = bench.JaxContender("float32", 3, micro_batch=0)
    theirs = bench.TorchContender(torch, "eager", "cpu", "float32", ours.state.params)
    assert bench.check_same_network(ours, theirs) < 1e-4
    images, _, resized, crops = bench.random_batch(3)
    # Both evaluate the same ten crops: PyTorch from the host's crops, ours from the uint8 images, on
    # labels drawn from PyTorch's own ranking, so that some top-1 and top-5 answers are right.
    theirs.set_batch(images, np.zeros(3), crops)
    theirs.net.eval()
    with torch.no_grad():
        probs = torch.softmax(theirs.net(theirs.crops), -1).view(3, 10, -1).mean(1).numpy()
    labels, top1, top5 = labels_with_hits(probs)
    ours.set_batch(images, labels, resized, what=("eval10",))
    sums = ours.eval10()
    assert (float(sums["top1_correct"]), float(sums["top5_correct"]), float(sums["count"])) == (top1, top5, 3)
    theirs.set_batch(images, labels, crops)
    before = [p.detach().clone() for p in theirs.net.parameters()]
    theirs.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, theirs.net.parameters()))
    assert tuple(theirs.eval().shape) == (3, 5)


def test_the_input_pipeline_benchmark_measures_each_format_and_scales_it(tmp_path):
    """bench/input_pipeline.py's pieces in this process at a few images: JPEGs of real photos, both
    copies prepare writes, repeated; the training and evaluation rates with the transfer to the
    device; and the epoch estimates, which follow from the rates as the docstring says."""
    bench = bench_module("input_pipeline")
    raw = str(tmp_path / "raw")
    bench.make_jpegs(raw, 16)
    rows = []
    for file_format in ("records", "jpeg"):
        copy = str(tmp_path / file_format)
        bench.make_copy(raw, copy, file_format)
        bench.repeat_copy(copy, 3)
        with open(os.path.join(copy, "prepared.json")) as f:
            assert json.load(f)["written"]["train"]["images"] == 48
        for pipeline in ("train", "eval"):
            rate = bench.measure_ours(copy, batch=8, repeats=1, evaluation=pipeline == "eval")
            assert rate > 0
            rows.append({"source": bench.SOURCES[file_format], "cores": 2, "pipeline": pipeline, "per_core": rate / 2})
    sizes = {"records": 256 * 256 * 3, "jpeg": bench.bytes_per_image(str(tmp_path / "jpeg"))}
    assert 5_000 < sizes["jpeg"] < 256 * 256 * 3  # a real photo's detail, compressed
    estimates = bench.epoch_estimates(rows, sizes, [25_000.0], host_cores=16)
    assert [e["source"] for e in estimates["rows"]] == ["records 256x256", "JPEG copy 256x256"]
    for e in estimates["rows"]:
        assert e["cores_for_60k"] == int(np.ceil(60_000 / e["per_core"]))
        assert e["epoch_minutes"] == pytest.approx(1_281_167 / min(16 * e["per_core"], 25_000) / 60)
        assert e["paper_hours"] == pytest.approx(90 * e["epoch_minutes"] / 60)
    assert estimates["rows"][0]["storage_gb_per_s"] == pytest.approx(estimates["rows"][0]["rate"] * 224 * 256 * 3 / 1e9)
    assert estimates["markdown"].count("\n") == 3
