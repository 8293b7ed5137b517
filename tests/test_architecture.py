"""The import structure: the layers contract of pyproject.toml holds, and no two files import
each other, directly or round a longer loop (imports inside functions and TYPE_CHECKING
blocks count: a lazy import only hides a cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("icolightning", "datamodules")


def file_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One loop of file imports through each import a -> b that b leads back to a."""
    loops = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                loops.append((importer, *back))
    return loops


def test_layers_contract_holds() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycle_between_files() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 60  # the whole tree was read
    assert file_cycles(graph) == []


def test_a_lazy_import_that_closes_a_loop_is_found(tmp_path) -> None:
    """The cycle check itself: a package whose two modules import each other, one of them lazily."""
    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loopy import b\n")
    (pkg / "b.py").write_text("def f():\n    from loopy import a\n    return a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        loops = file_cycles(grimp.build_graph("loopy", cache_dir=None))
    finally:
        sys.path.remove(str(tmp_path))
    assert ("loopy.a", "loopy.b", "loopy.a") in loops


def test_the_data_tools_start_without_torch() -> None:
    """`icolightning-regrid` and `icolightning-make-synthetic` print their usage and usage errors in
    well under a second: importing them (and regridding, reading, the synthetic generators) pulls in
    neither torch nor Lightning, which `datamodules` imports only when a datamodule is asked for."""
    light = ["icolightning.cli.regrid", "icolightning.cli.make_synthetic", "icolightning.cli.events",
             "datamodules.regrid", "datamodules.io", "datamodules.climatenet.synthetic",
             "datamodules.climate_sphere.synthetic"]
    code = (f"import importlib, sys\nfor m in {light!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    import datamodules  # the lazy exports still resolve, to the datamodule classes

    assert datamodules.ClimateDataModule.__module__ == "datamodules.climatenet.datamodule"
    assert {"ClimateDataModule", "ClimateSphereDataModule", "SphericalMNISTDataModule"} <= set(dir(datamodules))
