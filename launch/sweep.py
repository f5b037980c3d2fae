"""Hyper-parameter sweeps: a grid of --config.* overrides, one workdir per run, and a results table.

    python launch/sweep.py run --config=configs/default.py --root=runs/lr \
        --grid optim.learning_rate=0.005,0.01,0.02 --grid optim.batch_size=32,64 [--dry_run] \
        [-- --config.train.num_epochs=10 ...]
    python launch/sweep.py table --root=runs/lr

`run` expands the grid (every combination), names each run's workdir after its overrides
(`root/optim.learning_rate=0.01,optim.batch_size=64`) and runs them one after another; a run that
already finished is skipped and an interrupted one resumes, so the same command continues a sweep.
`--dry_run` prints the commands instead (to hand them to a cluster). `table` lists every run under
`root` with its best validation top-1 error, the step it was reached at, and the final errors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys


def expand(grid: list[str]) -> list[list[tuple[str, str]]]:
    """`["a.b=1,2", "c=x"]` -> `[[("a.b", "1"), ("c", "x")], [("a.b", "2"), ("c", "x")]]`."""
    axes = []
    for item in grid:
        if "=" not in item:
            raise SystemExit(f"error: --grid {item!r} is not FIELD=V1,V2,...")
        field, values = item.split("=", 1)
        axes.append([(field.strip(), v.strip()) for v in values.split(",") if v.strip()])
    return [list(combination) for combination in itertools.product(*axes)]


def run_name(overrides: list[tuple[str, str]]) -> str:
    return ",".join(f"{field}={value}" for field, value in overrides) or "base"


def run(args, extra: list[str]) -> int:
    failures = 0
    for overrides in expand(args.grid):
        workdir = os.path.join(args.root, run_name(overrides))
        command = [sys.executable, "-m", "alexnet_jax.main", f"--config={args.config}", f"--workdir={workdir}"]
        command += [f"--config.{field}={value}" for field, value in overrides] + extra
        if args.dry_run:
            print(" ".join(command))
            continue
        if os.path.exists(os.path.join(workdir, "final_metrics.json")):
            print(f"done already: {workdir}")
            continue
        print(f"running: {workdir}", flush=True)
        failures += subprocess.run(command).returncode != 0
    return 1 if failures else 0


def summarise(workdir: str) -> dict | None:
    """Best validation error and final errors of one run, from its metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if r["kind"] == "eval"]
    final = next((r for r in reversed(records) if r["kind"] == "final"), None)
    best = min(evals, key=lambda r: r["top1_error"]) if evals else None
    return {
        "run": os.path.basename(workdir),
        "best_top1_error": best["top1_error"] if best else None,
        "best_step": best["step"] if best else None,
        "final_top1_error": final["top1_error"] if final else None,
        "final_top5_error": final["top5_error"] if final else None,
        "status": "done" if final else "unfinished",
    }


def table(args) -> int:
    rows = [summarise(os.path.join(args.root, d)) for d in sorted(os.listdir(args.root))]
    rows = sorted((r for r in rows if r), key=lambda r: (r["best_top1_error"] is None, r["best_top1_error"]))
    if not rows:
        raise SystemExit(f"error: no runs with metrics under {args.root}")
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    width = max(len(r["run"]) for r in rows)
    print(f"{'run':<{width}}  best top-1  at step  final top-1  final top-5  status")
    for r in rows:
        print(
            f"{r['run']:<{width}}  {fmt(r['best_top1_error']):>10}  {fmt(r['best_step']):>7}  "
            f"{fmt(r['final_top1_error']):>11}  {fmt(r['final_top5_error']):>11}  {r['status']}"
        )
    return 0


def main(argv: list[str]) -> int:
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run every combination of the grid")
    run_parser.add_argument("--config", required=True, help="config file, e.g. configs/default.py")
    run_parser.add_argument("--root", required=True, help="directory holding one workdir per run")
    run_parser.add_argument("--grid", action="append", default=[], help="FIELD=V1,V2,... (repeatable)")
    run_parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    table_parser = commands.add_parser("table", help="tabulate the runs under --root")
    table_parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    return run(args, extra) if args.command == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
