"""bench/torch_compare.py: its PyTorch network computes ours (when PyTorch is installed), and its
Markdown rows carry the measured figures."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("torch_compare", os.path.join(ROOT, "bench", "torch_compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_section_lists_every_row(bench):
    result = {
        "machine": dict(date="2026-11-23", cpu="Test CPU", cores=2, device="cpu", backend="cpu", jax="0", torch="0",
                        torch_threads=2, python="3.11"),  # fmt: skip
        "args": dict(batches="8", repeats=3, warmup=1, dtype="float32", torch_modes="eager", what="train", pause=1.0,
                     micro_batch=-1),  # fmt: skip
        "rows": [
            dict(what="train", batch=8, framework="jax", micro_batch=4, images_per_s=12.5, step_median_s=0.64,
                 compile_s=3.0, peak_memory_mb=1500.0, tflops=0.05, vs_fastest_torch=1.25),  # fmt: skip
            dict(what="train", batch=8, framework="torch eager", micro_batch=None, images_per_s=10.0,
                 step_median_s=0.8, compile_s=1.0, peak_memory_mb=None, tflops=0.04),  # fmt: skip
        ],
    }
    text = bench.markdown_section(result)
    assert "python bench/torch_compare.py --batches=8 --repeats=3" in text and "Test CPU, 2 cores" in text
    assert "| train | 8 | jax (micro-batch 4) | 12.5 | 0.6400 | 3.0 | 1500 | 0.050 | **1.25** |" in text
    assert "| train | 8 | torch eager | 10.0 | 0.8000 | 1.0 | - | 0.040 |  |" in text


def test_the_pytorch_network_computes_ours(bench):
    torch = pytest.importorskip("torch")
    ours = bench.JaxContender("float32", 2, micro_batch=0)
    theirs = bench.TorchContender(torch, "eager", "cpu", "float32", ours.state.params)
    assert bench.check_same_network(ours, theirs) < 1e-4
    images, labels, crops = bench.random_batch(2)
    theirs.set_batch(images, labels, crops[:, :2])
    before = [p.detach().clone() for p in theirs.net.parameters()]
    theirs.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, theirs.net.parameters()))
    assert tuple(theirs.eval().shape) == (2, 5)

