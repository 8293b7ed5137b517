"""Bad input at the command line: the console scripts (Hydra jobs and argparse tools alike) print one
line that names the option or file, exit 2 for usage/config errors and 1 for data errors, and show a
traceback only with HYDRA_FULL_ERROR=1.

Every Hydra case runs the console script's own `main()` with its command line in sys.argv; the cases
marked SUBPROCESS, the argparse tools' cases (ARGPARSE) and the traceback case run the installed
console scripts as processes (each imports torch and Lightning, several seconds on 2 cores, so they
run two at a time in one fixture)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from checkpoints import write_checkpoint
from hydra.core.global_hydra import GlobalHydra

from datamodules.climate_sphere.files import split_list
from datamodules.climate_sphere.synthetic import generate_sphere_dataset
from icolightning.cli.entry import ToolParser, argparse_main

BIN = Path(sys.executable).parent


def _latlon_file(path: Path, variables: tuple[str, ...]) -> Path:
    lat, lon = np.linspace(-90, 90, 12), np.arange(0, 360, 15.0)
    fields = {v: (("time", "lat", "lon"), np.ones((1, lat.size, lon.size), np.float32)) for v in variables}
    xr.Dataset(fields, coords={"time": [0], "lat": lat, "lon": lon}).to_netcdf(path)
    return path


def _files(root: Path) -> dict[str, str]:
    good = write_checkpoint(root / "good.ckpt")
    raw = good.read_bytes()
    (root / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    exploit = {"_target_": "numpy.save", "_args_": [str(root / "planted.npy"), [1, 2, 3]]}
    write_checkpoint(root / "untrusted.ckpt", hparams={"net": exploit})
    nc = _latlon_file(root / "tmq_only.nc", ("TMQ",)).read_bytes()
    _latlon_file(root / "four.nc", ("TMQ", "U850", "V850", "PSL"))
    (root / "truncated.nc").write_bytes((root / "four.nc").read_bytes()[: len(nc) // 2])
    (root / "corrupt.nc").write_bytes(np.random.default_rng(1).bytes(2048))
    generate_sphere_dataset(root / "sphere", n_train=1, n_val=1, n_test=1)
    first = split_list(root / "sphere", "train")[0]  # the papers' format, but a level-3 mesh
    np.savez(first, data=np.zeros((16, 642), np.float32), labels=np.zeros((3, 642), np.float32))
    return {"root": str(root), "good": str(good)}


# (id, console script, arguments, exit status, text the one line must contain)
CASES = [
    ("unknown_option", "train", ["trainer.limit_train_batchez=3"], 2, "trainer.limit_train_batchez"),
    ("missing_data_folder", "train", ["data=climatenet"], 1, "climatenet/train does not exist"),
    ("no_gpu", "train", ["experiment=climatenet_unet16"], 2, "add trainer=cpu"),
    ("missing_checkpoint", "eval", ["ckpt_path={root}/nowhere.ckpt"], 1, "nowhere.ckpt: checkpoint file does not"),
    ("random_checkpoint", "eval", ["ckpt_path={root}/random.ckpt"], 1, "random.ckpt: not a readable checkpoint"),
    ("truncated_checkpoint", "predict", ["ckpt_path={root}/truncated.ckpt", "input={root}/four.nc"], 1,
     "truncated.ckpt: not a readable checkpoint"),
    ("untrusted_checkpoint", "eval", ["ckpt_path={root}/untrusted.ckpt"], 1, "refusing hyper_parameters.net._args_"),
    ("checkpoint_for_another_level", "eval", ["ckpt_path={good}"], 2, "trained on variables"),
    ("checkpoint_for_other_variables", "predict", ["ckpt_path={good}", "input={root}/tmq_only.nc"], 1,
     "tmq_only.nc: variable 'U850, V850, PSL': not in the file"),
    ("corrupt_netcdf", "predict", ["ckpt_path={good}", "input={root}/corrupt.nc"], 1,
     "corrupt.nc: cannot be read as netCDF"),
    ("truncated_netcdf", "predict", ["ckpt_path={good}", "input={root}/truncated.nc"], 1, "truncated.nc: "),
    ("missing_netcdf", "predict", ["ckpt_path={good}", "input={root}/absent.nc"], 1, "absent.nc: no netCDF input"),
    ("malformed_sphere_file", "train", ["data=climate_sphere_l5", "data.data_dir={root}/sphere",
                                        "data.preprocess_workers=1", "data.num_workers=0"], 1,
     "00000-mesh.npz: 'data' is (16, 642)"),
]
# The argparse tools, as processes: a file they cannot use (1) and a bad argument (2).
ARGPARSE = [
    ("regrid_corrupt_input", "regrid", ["{root}/corrupt.nc", "{root}/out.nc", "--level", "2"], 1,
     "corrupt.nc: cannot be read as netCDF"),
    ("regrid_bad_method", "regrid", ["{root}/four.nc", "{root}/out.nc", "--level", "2", "--method", "cubic"], 2,
     "argument --method: invalid choice: 'cubic'"),
    ("events_corrupt_input", "events", ["{root}/corrupt.nc", "--output", "{root}/events", "--quiet"], 1,
     "corrupt.nc: cannot be read as netCDF"),
    ("events_unknown_option", "events", ["{root}/four.nc", "--output", "{root}/events", "--levle", "3"], 2,
     "unrecognized arguments: --levle 3"),
    ("synthetic_into_a_file", "make-synthetic", ["{root}/four.nc", "--train", "1", "--test", "0", "--quiet"], 1,
     "Not a directory"),
    ("synthetic_bad_count", "make-synthetic", ["{root}/syn", "--train", "many"], 2,
     "argument --train: invalid int value: 'many'"),
]
SUBPROCESS = ("unknown_option", "untrusted_checkpoint")
FULL_ERROR_CASE = ("full_error_traceback", "eval", ["ckpt_path={root}/nowhere.ckpt"], 1, "CheckpointError")


def _command_line(case, files: dict[str, str]) -> list[str]:
    name, script, args, _, _ = case
    hydra = [] if case in ARGPARSE else [f"paths.root_dir={files['root']}/{name}"]
    return [f"icolightning-{script}", *hydra, *(a.format(**files) for a in args)]


def _run_process(case, files: dict[str, str]) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    if case is FULL_ERROR_CASE:
        env["HYDRA_FULL_ERROR"] = "1"
    script, *args = _command_line(case, files)
    return subprocess.run([str(BIN / script), *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=files["root"])


def _run_main(case, files: dict[str, str], monkeypatch, capsys) -> subprocess.CompletedProcess:
    """The console script's `main()` in this process, as its entry point calls it."""
    module = {"train": "train", "eval": "evaluate", "predict": "predict"}[case[1]]
    main = importlib.import_module(f"icolightning.cli.{module}").main
    monkeypatch.setattr(sys, "argv", _command_line(case, files))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = exc.code
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, status, out.out, out.err)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("cli_errors"))


@pytest.fixture(scope="module")
def processes(files):
    cases = [c for c in CASES if c[0] in SUBPROCESS] + ARGPARSE + [FULL_ERROR_CASE]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([c[0] for c in cases], pool.map(lambda c: _run_process(c, files), cases), strict=True))


@pytest.mark.parametrize("case", CASES + ARGPARSE, ids=[c[0] for c in CASES + ARGPARSE])
def test_bad_input_gives_one_line_and_an_exit_status(request, files, case, monkeypatch, capsys):
    name, script, _, status, text = case
    if name in SUBPROCESS or case in ARGPARSE:
        result = request.getfixturevalue("processes")[name]
    else:
        result = _run_main(case, files, monkeypatch, capsys)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, result.stderr[-2000:]
    assert lines, result.stdout[-2000:]
    assert lines[-1].startswith(f"icolightning-{script}: error: "), lines[-3:]
    assert text in lines[-1]
    assert "Traceback" not in result.stderr
    if case in ARGPARSE:
        assert len(lines) == 1, lines
    assert not (Path(files["root"]) / "planted.npy").exists()
    if name == "checkpoint_for_another_level":  # refused before generating the synthetic data set
        assert not (Path(files["root"]) / name / "data").exists()


def test_hydra_full_error_shows_the_traceback(processes):
    result = processes[FULL_ERROR_CASE[0]]
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CheckpointError" in result.stderr


def _tool(failure: BaseException):
    """An argparse tool (as the shipped ones are built) whose work raises `failure`."""

    def run(args) -> None:
        raise failure

    return argparse_main(lambda: ToolParser(prog="icolightning-tool"), run)


@pytest.mark.parametrize(("failure", "status", "line"), [
    (RuntimeError("boom\nsecond line"), 1, "RuntimeError: boom second line (set HYDRA_FULL_ERROR=1 for the traceback)"),
    (PermissionError(13, "Permission denied", "/x/out.nc"), 1, "[Errno 13] Permission denied: '/x/out.nc'"),
])
def test_argparse_tools_report_unexpected_and_os_errors_in_one_line(failure, status, line, monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert _tool(failure)([]) == status
    assert capsys.readouterr().err == f"icolightning-tool: error: {line}\n"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(type(failure)):
        _tool(failure)([])
