"""Tabulate finished runs (several seeds per experiment) as mean ± std beside the published rows.

    python scripts/results_table.py outputs/train/sphere_l5_* --markdown table.md --json table.json

Each RUN_DIR is a run folder with the metrics.json that `icolightning-train` / `icolightning-eval`
write (test metrics); a folder holding several runs (a Hydra multirun) is searched. Runs are grouped
by experiment: Hydra's recorded `experiment` choice, else the run `name`, with a trailing seed
marker (`-seed3`, `_s3`) dropped. Figures are percent. Published rows come from
docs/published_climate.json (with their sources); cells a paper does not give stay empty, and so do
experiments without runs. Works for any climate segmentation run (ClimateNet experiments too).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from icolightning.classes import CLIMATE_CLASSES, EVENT_CLASSES

METRICS: tuple[tuple[str, str], ...] = (
    ("mean_acc", "mean acc"),
    ("mAP", "mAP"),
    ("mean_iou", "mean IoU"),
    *((f"acc_{c}", f"acc {c}") for c in CLIMATE_CLASSES),
    *((f"ap_{c}", f"AP {c}") for c in EVENT_CLASSES),
    *((f"iou_{c}", f"IoU {c}") for c in CLIMATE_CLASSES),
)
"""(metric key without the `test/` prefix, column title)."""
PUBLISHED = Path(__file__).resolve().parents[1] / "docs" / "published_climate.json"
_SEED_SUFFIX = re.compile(r"[-_](seed|s)\d+$")


def find_runs(paths: list[Path]) -> list[Path]:
    """Every metrics.json at or below the given run folders (sorted, each once)."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file() and path.name == "metrics.json":
            found.add(path.resolve())
        elif path.is_dir():
            found.update(p.resolve() for p in path.rglob("metrics.json"))
        else:
            raise SystemExit(f"results_table: {path} is neither a run folder nor a metrics.json")
    return sorted(found)


def experiment_of(run: Path) -> str:
    """The run's experiment: the Hydra choice, else its config name, else its folder name."""
    hydra_dir = run / ".hydra"
    choice = None
    if (hydra_dir / "hydra.yaml").is_file():
        choice = yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"].get("experiment")
    if not choice and (hydra_dir / "config.yaml").is_file():
        choice = yaml.safe_load((hydra_dir / "config.yaml").read_text()).get("name")
    return _SEED_SUFFIX.sub("", str(choice or run.name))


def collect(metrics_files: list[Path]) -> dict[str, dict]:
    """experiment -> {"runs": [folders], metric: {"mean", "std", "n", "values"}} in percent."""
    groups: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path in metrics_files:
        test = json.loads(path.read_text()).get("test") or {}
        if not test:
            continue
        groups[experiment_of(path.parent)].append((path.parent, test))
    table = {}
    for experiment, runs in sorted(groups.items()):
        row: dict = {"runs": [str(run) for run, _ in runs]}
        for key, _ in METRICS:
            values = [100.0 * test[f"test/{key}"] for _, test in runs if test.get(f"test/{key}") is not None]
            if values:
                row[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                            else None, "n": len(values), "values": values}
        table[experiment] = row
    return table


def _cell(stat: dict | None) -> str:
    if not stat:
        return ""
    return f"{stat['mean']:.2f}" if stat["std"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def markdown(ours: dict[str, dict], published: dict) -> str:
    """Published rows (their experiment named), then ours; mean ± std over seeds (n runs)."""
    head = ["row", "experiment", "runs", *(title for _, title in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in published["rows"]:
        cells = ["" if row.get(key) is None else f"{row[key]:.2f}" for key, _ in METRICS]
        lines.append(f"| *{row['model']}* [{row['source']}] | {row['experiment']} | published | " + " | ".join(cells)
                     + " |")
    for experiment, row in ours.items():
        cells = [_cell(row.get(key)) for key, _ in METRICS]
        lines.append(f"| ours | {experiment} | {len(row['runs'])} | " + " | ".join(cells) + " |")
    missing = sorted({row["experiment"] for row in published["rows"]} - set(ours))
    for experiment in missing:
        lines.append(f"| ours | {experiment} | 0 |" + " |" * len(METRICS))
    sources = [f"- [{key}] {text}" for key, text in published["sources"].items()]
    return "\n".join([*lines, "", "Percent, test split; ours: mean ± sample std over runs.", *sources]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--markdown", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    parser.add_argument("--published", type=Path, default=PUBLISHED, help="published rows (default: %(default)s)")
    args = parser.parse_args(argv)
    ours = collect(find_runs(args.runs))
    if not ours:
        parser.error("no metrics.json with test metrics under the given RUN_DIRs")
    published = json.loads(args.published.read_text())
    text = markdown(ours, published)
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text, end="")
    if args.json:
        args.json.write_text(json.dumps({"ours": ours, "published": published}, indent=1) + "\n")


if __name__ == "__main__":
    main()
