"""Many runs of one command: hyper-parameter grids, and the paper's ablations as one study.

    python launch/sweep.py run --config=configs/default.py --root=runs/lr \\
        --grid optim.learning_rate=0.005,0.01,0.02 [--grid optim.batch_size=32,64] [--dry_run] [-- --config.x=y]
    python launch/sweep.py table --root=runs/lr
    python launch/sweep.py ablations --root=runs/ablations [--seeds=3] [--base=paper] [--only=no_lrn,tanh]
        [--dry_run] [-- --config.x=y]
    python launch/sweep.py report --root=runs/ablations
    python launch/sweep.py figure1 --root=runs/figure1 [--seeds=3] [--rates=0.001,0.01] [--max_epochs=20] [--epochs=20]

Every run gets its own workdir (`root/<overrides>` for a grid, `root/<ablation>/seed=<s>` for the
study) and runs one after another; a finished run is skipped and an interrupted one resumes, so the
same command continues where it stopped. `--dry_run` prints the commands instead, for a scheduler.
`ablations` runs the baseline and every preset of configs/ablations.py for each seed, then writes
`root/ablations.md` (each run's errors; each ablation's difference from the baseline of the same
seed, mean and standard deviation, beside the paper's claim) and `root/ablations.png`; `report`
writes them again from what the runs left. `figure1` is section 3.1's Figure 1, ReLU against tanh
in a four-layer net, each at the rate of a sweep that reached 25 % training error fastest
(alexnet_jax/figure1.py; `root/figure1.md` and `root/figure1.png`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import runpy
import subprocess
import sys
import types

import numpy as np
from matplotlib.figure import Figure

from alexnet_jax import config_files, figure1
from alexnet_jax import main as main_lib

# configs/ablations.py, loaded by path (config_files.py): no `configs` package is installed.
ABLATIONS_CONFIG = os.path.join(config_files.configs_dir(), "ablations.py")
ablations_config = types.SimpleNamespace(**runpy.run_path(ABLATIONS_CONFIG))
ERRORS = ("top1_error", "top5_error", "ten_crop_top1_error", "ten_crop_top5_error")


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


def execute(runs: list[tuple[str, list[str]]], dry_run: bool = False, inline: bool = False) -> int:
    """Runs `python -m alexnet_jax.main ARGS --workdir=W` for each (W, ARGS), skipping finished ones;
    `inline`: in this process, one after another (no start-up per run; a crash stops the sweep)."""
    failures = 0
    for workdir, args in runs:
        command = [sys.executable, "-m", "alexnet_jax.main", *args, f"--workdir={workdir}"]
        if dry_run:
            print(" ".join(command))
        elif os.path.exists(os.path.join(workdir, "final_metrics.json")):
            print(f"done already: {workdir}")
        else:
            print(f"running: {workdir}", flush=True)
            code = main_lib.run_command_line(command[3:]) if inline else subprocess.run(command).returncode
            failures += code != 0
    return 1 if failures else 0


def read_run(workdir: str) -> dict | None:
    """What a run left: its evaluations, its training curve and its final errors."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    final_path = os.path.join(workdir, "final_metrics.json")
    final = json.load(open(final_path)) if os.path.exists(final_path) else None
    config = json.load(open(os.path.join(workdir, "config.json")))
    return {"records": records, "final": final, "config": config}


def summarise(workdir: str) -> dict | None:
    """Best validation error and final errors of one grid run, from its metrics.jsonl."""
    run = read_run(workdir)
    if run is None:
        return None
    evals = [r for r in run["records"] if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["top1_error"]) if evals else None
    final = run["final"]
    training = training_error_by_epoch(run["records"])
    return {
        "run": os.path.basename(workdir),
        "best_top1_error": best["top1_error"] if best else None,
        "best_step": best["step"] if best else None,
        "final_top1_error": final["top1_error"] if final else None,
        "final_top5_error": final["top5_error"] if final else None,
        "epochs_to_25": first_epoch_at_most(training, 0.25),
        "train_error": training[max(training)] if training else None,
        "status": "done" if final else "unfinished",
    }


def table(root: str) -> int:
    rows = [summarise(os.path.join(root, d)) for d in sorted(os.listdir(root))]
    rows = sorted((r for r in rows if r), key=lambda r: (r["best_top1_error"] is None, r["best_top1_error"]))
    if not rows:
        raise SystemExit(f"error: no runs with metrics under {root}")
    width = max(len(r["run"]) for r in rows)
    # The last two: section 3.1's measure (the first epoch whose logged batches' mean training error was
    # at most 25 %) and that mean over the last epoch logged.
    print(f"{'run':<{width}}  best top-1  at step  final top-1  final top-5  epochs to 25 %  last train error  status")
    for r in rows:
        cells = [
            _number(r["best_top1_error"]),
            _number(r["best_step"]),
            _number(r["final_top1_error"]),
            _number(r["final_top5_error"]),
            "never" if r["epochs_to_25"] is None and r["train_error"] is not None else _number(r["epochs_to_25"]),
            _number(r["train_error"]),
        ]
        print(
            f"{r['run']:<{width}}  {cells[0]:>10}  {cells[1]:>7}  {cells[2]:>11}  {cells[3]:>11}  "
            f"{cells[4]:>14}  {cells[5]:>16}  {r['status']}"
        )
    return 0


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------- the ablation study


def study_runs(root: str, names: list[str], seeds: int, base: str, extra: list[str]) -> list[tuple]:
    """(ablation, seed, workdir, command-line arguments) of every run of the study."""
    runs = []
    for name in ["baseline", *names]:
        for seed in range(seeds):
            args = [f"--config={ABLATIONS_CONFIG}:{name},{base}", f"--config.seed={seed}", *extra]
            runs.append((name, seed, os.path.join(root, name, f"seed={seed}"), args))
    return runs


def run_summary(workdir: str) -> dict | None:
    """A finished run's final errors, its training error over the last epoch, and the first epoch
    whose mean training error (on augmented batches, dropout on) was at most 25 %."""
    run = read_run(workdir)
    if run is None or run["final"] is None:
        return None
    means = training_error_by_epoch(run["records"])
    summary = {key: run["final"][key] for key in ERRORS if key in run["final"]}
    summary["train_error"] = means[max(means)] if means else None
    summary["epochs_to_25"] = first_epoch_at_most(means, 0.25)
    return summary


def training_error_by_epoch(records: list[dict]) -> dict[int, float]:
    """{epoch (1-based): mean training error of the batches logged in it} (augmented batches, dropout
    on; every `train.log_every_steps`-th batch)."""
    by_epoch: dict[int, list[float]] = {}
    for record in records:
        if record["kind"] == "train":
            by_epoch.setdefault(math.ceil(record["epoch"]), []).append(1.0 - record["accuracy"])
    return {epoch: float(np.mean(errors)) for epoch, errors in sorted(by_epoch.items())}


def first_epoch_at_most(means: dict[int, float], level: float) -> int | None:
    """The first epoch whose mean training error was at most `level`; None if none was."""
    return next((epoch for epoch, error in means.items() if error <= level), None)


def collect(root: str) -> dict[str, dict[int, dict]]:
    """{ablation: {seed: run_summary}} of the finished runs under `root`."""
    results: dict[str, dict[int, dict]] = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for entry in sorted(os.listdir(os.path.join(root, name))) if os.path.isdir(os.path.join(root, name)) else []:
            if entry.startswith("seed="):
                summary = run_summary(os.path.join(root, name, entry))
                if summary is not None:
                    results.setdefault(name, {})[int(entry[len("seed=") :])] = summary
    return results


def _spread(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan, len(values)


def effects(results: dict[str, dict[int, dict]]) -> list[dict]:
    """Each ablation's difference from the baseline of the same seed, in percentage points of error:
    mean, standard deviation and number of seeds, per metric; and the paper's claim."""
    baseline = results.get("baseline", {})
    rows = []
    for name, ablation in ablations_config.ABLATIONS.items():
        runs = results.get(name, {})
        seeds = sorted(set(runs) & set(baseline))
        if not seeds:
            continue
        row = {
            "name": name,
            "section": ablation.section,
            "change": ablation.change,
            "claim": ablation.claim,
            "paper_top1": ablation.paper_top1,
            "paper_top5": ablation.paper_top5,
            "seeds": seeds,
        }
        for key in (*ERRORS, "train_error"):
            diffs = [
                100 * (runs[s][key] - baseline[s][key])
                for s in seeds
                if runs[s].get(key) is not None and baseline[s].get(key) is not None
            ]
            row[key] = (*_spread(diffs), diffs)
        ratios = [
            runs[s]["epochs_to_25"] / baseline[s]["epochs_to_25"]
            for s in seeds
            if runs[s]["epochs_to_25"] and baseline[s]["epochs_to_25"]
        ]
        row["epochs_ratio"] = (*_spread(ratios), ratios)
        row["never_reached_25"] = sum(runs[s]["epochs_to_25"] is None for s in seeds)
        rows.append(row)
    if baseline and all("ten_crop_top1_error" in r for r in baseline.values()):
        # Section 4.1's test-time augmentation, from the baseline runs themselves.
        row = {
            "name": "centre_crop",
            "section": "4.1",
            "change": "the centre crop instead of 10 crops",
            "claim": "10-crop testing (reported through the final results)",
            "paper_top1": None,
            "paper_top5": None,
            "seeds": sorted(baseline),
        }
        for metric in ("top1_error", "top5_error"):
            diffs = [100 * (b[metric] - b[f"ten_crop_{metric}"]) for b in baseline.values()]
            row[metric] = row[f"ten_crop_{metric}"] = (*_spread(diffs), diffs)
        rows.append(row)
    return rows


def _cell(entry) -> str:
    mean, std, n = entry[:3]
    if n == 0:
        return "-"
    return f"{mean:+.2f}" if n == 1 else f"{mean:+.2f} ± {std:.2f}"


def report_markdown(results: dict, rows: list[dict], title: str) -> str:
    """The study as Markdown: every run, then every ablation's effect beside the paper's."""
    lines = [
        f"# {title}",
        "",
        "## Runs: final errors (%)",
        "",
        "| run | seed | top-1 | top-5 | 10-crop top-1 | 10-crop top-5 | training error, last epoch | "
        "first epoch with training error <= 25 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    percent = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    for name in ["baseline", *ablations_config.ABLATIONS]:
        for seed, run in sorted(results.get(name, {}).items()):
            lines.append(
                f"| {name} | {seed} | "
                + " | ".join(percent(run.get(k)) for k in (*ERRORS, "train_error"))
                + f" | {run['epochs_to_25'] or 'never'} |"
            )
    lines += [
        "",
        "## Effects: ablation minus baseline, same seed (percentage points of error; mean ± standard "
        "deviation over seeds)",
        "",
        "| section | ablation | seeds | Δ top-1 | Δ top-5 | Δ 10-crop top-1 | Δ 10-crop top-5 | Δ training "
        "error | epochs to 25 % training error, ablation / baseline | the paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row.get("epochs_ratio")
        ratio_cell = "-" if ratio is None else _cell(ratio).replace("+", "") + "x" if ratio[2] else "-"
        if row.get("never_reached_25"):
            ratio_cell += f" ({row['never_reached_25']} run(s) never reached it)"
        cells = [_cell(row[k]) if k in row else "-" for k in (*ERRORS, "train_error")]
        lines.append(
            f"| {row['section']} | {row['change']} | {len(row['seeds'])} | "
            + " | ".join(cells)
            + f" | {ratio_cell} | {row['claim']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    """Each ablation's Δ 10-crop top-1 error (mean, ± one standard deviation, every seed), the paper's
    number marked where it gives one. Effects far larger than the rest (a network that did not train
    at all) are drawn at the edge, with their value, so that they do not flatten the others."""
    figure = Figure(figsize=(9, 0.55 * len(rows) + 1.6))
    axes = figure.subplots()
    near = [abs(v) for r in rows for v in (r["ten_crop_top1_error"][3] + [r["paper_top1"] or 0]) if abs(v) <= 20]
    limit = max(5.0, 1.15 * max(near or [0.0]))
    labelled = set()

    def label(name):
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for y, row in enumerate(rows):
        mean, std, n, diffs = row["ten_crop_top1_error"]
        if abs(mean) > limit:
            edge = math.copysign(limit, mean)
            axes.scatter([edge], [y], marker=">" if mean > 0 else "<", color="tab:blue", s=60)
            axes.annotate(
                f"{mean:+.1f} (off scale)",
                (edge, y),
                textcoords="offset points",
                xytext=(-8 if mean > 0 else 8, 8),
                ha="right" if mean > 0 else "left",
                fontsize=7,
            )
        else:
            error = [[0.0 if math.isnan(std) else std]] * 2
            axes.errorbar(
                [mean], [y], xerr=error, fmt="o", color="tab:blue", capsize=4, label=label("ours: mean ± 1 sd")
            )
            axes.scatter(diffs, [y] * len(diffs), s=12, color="tab:blue", alpha=0.4, label=label("ours: each seed"))
        if row["paper_top1"] is not None:
            axes.scatter([row["paper_top1"]], [y], marker="D", color="tab:red", label=label("the paper"))
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_xlim(-limit, limit)
    axes.set_yticks(range(len(rows)), [f"{r['section']} {r['change']}" for r in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(
        "10-crop top-1 error, ablation minus baseline, percentage points (> 0: the paper's choice helps)", fontsize=8
    )
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(root: str, title: str | None = None) -> tuple[str, str]:
    """Writes root/ablations.md and root/ablations.png from the finished runs; returns their paths."""
    results = collect(root)
    if "baseline" not in results:
        raise SystemExit(f"error: no finished baseline run under {root}")
    rows = effects(results)
    title = title or f"Ablations of sections 3-4 ({os.path.basename(os.path.abspath(root))})"
    markdown, picture = os.path.join(root, "ablations.md"), os.path.join(root, "ablations.png")
    with open(markdown, "w") as f:
        f.write(report_markdown(results, rows, title))
    plot([r for r in rows if r["ten_crop_top1_error"][2]], picture, title)
    print(f"wrote {markdown} and {picture}")
    return markdown, picture


def main(argv: list[str]) -> int:
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    grid = commands.add_parser("run", help="run every combination of the grid")
    grid.add_argument("--config", required=True, help="config file, e.g. configs/default.py")
    grid.add_argument("--root", required=True, help="directory holding one workdir per run")
    grid.add_argument("--grid", action="append", default=[], help="FIELD=V1,V2,... (repeatable)")
    grid.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    grid.add_argument("--inline", action="store_true", help="run in this process (small runs: no start-up each)")
    commands.add_parser("table", help="tabulate the grid runs under --root").add_argument("--root", required=True)
    study = commands.add_parser("ablations", help="the baseline and every ablation of configs/ablations.py")
    study.add_argument("--root", required=True, help="directory holding root/<ablation>/seed=<s>")
    study.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of every configuration")
    study.add_argument(
        "--base",
        default="paper",
        choices=sorted(ablations_config.BASES),
        help="the config the ablations change: paper (ImageNet), default (digits) or smoke",
    )
    study.add_argument("--only", default="", help="a comma-separated subset of the ablations (default: all)")
    study.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    study.add_argument("--inline", action="store_true", help="run in this process (small runs: no start-up each)")
    commands.add_parser("report", help="rewrite the study's table and plot").add_argument("--root", required=True)
    _figure1_arguments(commands)
    args = parser.parse_args(argv)
    if args.command == "figure1":
        return run_figure1(parser, args, extra)
    if args.command == "run":
        runs = [
            (
                os.path.join(args.root, run_name(o)),
                [f"--config={args.config}"] + [f"--config.{field}={value}" for field, value in o] + extra,
            )
            for o in expand(args.grid)
        ]
        return execute(runs, args.dry_run, args.inline)
    if args.command == "table":
        return table(args.root)
    if args.command == "report":
        report(args.root)
        return 0
    names = [n for n in args.only.split(",") if n] or list(ablations_config.ABLATIONS)
    unknown = set(names) - set(ablations_config.ABLATIONS)
    if unknown:
        known = ", ".join(ablations_config.ABLATIONS)
        parser.error(f"unknown ablation(s) {', '.join(sorted(unknown))}; one of {known}")
    runs = study_runs(args.root, names, args.seeds, args.base, extra)
    failed = execute([(workdir, command) for _, _, workdir, command in runs], args.dry_run, args.inline)
    if not args.dry_run:
        report(args.root)
    return failed


# ------------------------------------------------------------------------------------------ Figure 1


def _figure1_arguments(commands) -> None:
    defaults = figure1.Settings()
    command = commands.add_parser(
        "figure1", help="section 3.1's Figure 1: ReLU against tanh, each at its fastest rate (alexnet_jax/figure1.py)"
    )
    command.add_argument("--root", required=True, help="directory for the runs, figure1.md and figure1.png")
    command.add_argument("--seeds", type=int, default=defaults.seeds, help="seeds 0 .. N-1 of every rate")
    command.add_argument(
        "--rates",
        default=",".join(f"{rate:g}" for rate in defaults.rates),
        help="the learning rates the sweep tries, for each activation (comma-separated)",
    )
    command.add_argument(
        "--max_epochs", type=float, default=defaults.max_epochs, help="the sweep's budget per run, in epochs"
    )
    command.add_argument("--epochs", type=float, default=defaults.epochs, help="the figure's length, in epochs")
    command.add_argument("--target", type=float, default=defaults.target, help="the training error to reach")
    command.add_argument("--batch_size", type=int, default=defaults.batch_size)
    command.add_argument(
        "--evals_per_epoch",
        type=int,
        default=defaults.evals_per_epoch,
        help="measurements of the whole training set's error per epoch",
    )


def run_figure1(parser: argparse.ArgumentParser, args, extra: list[str]) -> int:
    """`figure1`: the settings from the flags, checked, then the experiment; 2 when no rate of the grid
    got every seed to 25 % (the runs are kept: a wider grid reuses them)."""
    if extra:
        parser.error(f"figure1 takes no -- arguments, got {' '.join(extra)}")
    try:
        rates = tuple(float(rate) for rate in args.rates.split(",") if rate.strip())
    except ValueError:
        parser.error(f"--rates={args.rates!r} is not a comma-separated list of numbers")
    settings = figure1.Settings(
        rates=rates,
        seeds=args.seeds,
        max_epochs=args.max_epochs,
        epochs=args.epochs,
        target=args.target,
        batch_size=args.batch_size,
        evals_per_epoch=args.evals_per_epoch,
    )
    try:
        settings.check()
    except ValueError as error:
        parser.error(str(error))
    try:
        figure1.run_experiment(settings, args.root)
    except figure1.NoRateReached as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
