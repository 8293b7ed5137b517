"""Console entry points: one line per error and an exit status by kind, for the Hydra jobs
(`hydra_entry`) and the argparse tools (`argparse_main`) alike.

2: a wrong option or combination (unknown key, bad override or argument, missing value, no GPU for
   trainer=gpu);
1: a file that cannot be used (data folder, netCDF file, checkpoint; any DataError or OSError), or an
   unexpected failure, reported as its type and message.
``HYDRA_FULL_ERROR=1`` shows the full traceback instead, as in any Hydra application; the argparse
tools honour the same variable, so one switch serves every icolightning command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from icolightning.config import CONFIG_DIR
from icolightning.errors import DataError, UsageError

FULL_ERROR = "HYDRA_FULL_ERROR"
USAGE_ERRORS: tuple[type[BaseException], ...] = (UsageError, HydraException, OmegaConfBaseException)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes (Hydra wraps errors raised while instantiating a `_target_`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def describe(exc: BaseException) -> tuple[str, int]:
    """(message, exit status) of an error raised by a job or by Hydra's config composition."""
    chain = list(_chain(exc))
    for kinds, status in ((DataError, 1), (UsageError, 2), (OSError, 1)):
        found = next((e for e in chain if isinstance(e, kinds)), None)
        if found is not None:
            return one_line(found), status
    config = next((e for e in chain if isinstance(e, USAGE_ERRORS)), None)
    if config is not None:
        cause = config.__cause__
        detail = f" ({str(cause).splitlines()[0]})" if isinstance(cause, OmegaConfBaseException) else ""
        return one_line(config) + detail, 2
    return f"{type(exc).__name__}: {one_line(exc)} (set {FULL_ERROR}=1 for the traceback)", 1


def report(prog: str, exc: BaseException) -> int:
    """Print `prog: error: <one line>` on stderr; the exit status that goes with it."""
    message, status = describe(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def fail(exc: BaseException) -> NoReturn:
    raise SystemExit(report(Path(sys.argv[0]).name, exc)) from None


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose complaints are UsageErrors, reported by `argparse_main` as one line
    (argparse itself prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def argparse_main(build_parser: Callable[[], argparse.ArgumentParser],
                  run: Callable[[argparse.Namespace], None]) -> Callable[[Sequence[str] | None], int]:
    """The console `main(argv=None)` of an argparse tool: parse, `run(args)`, report errors as above.

    A usage error exits with status 2 (SystemExit, as argparse does for a bad argument); any other
    error returns its status, so `main` also serves as a function. `build_parser` should make a
    `ToolParser`, or argparse prints its own usage block for a bad argument.
    """

    def main(argv: Sequence[str] | None = None) -> int:
        parser = build_parser()
        try:
            run(parser.parse_args(argv))
        except Exception as exc:
            if os.environ.get(FULL_ERROR) == "1":
                raise
            status = report(parser.prog, exc)
            if status == 2:
                raise SystemExit(status) from None
            return status
        return 0

    return main


def checked_level(level: int) -> int:
    """An icosahedral --level option, refused (UsageError) outside 0..MAX_LEVEL."""
    from icolightning.grid import MAX_LEVEL

    if not 0 <= level <= MAX_LEVEL:
        raise UsageError(f"--level must be in 0..{MAX_LEVEL}, got {level}")
    return level


def load_job(path: str) -> Callable[[DictConfig], Any]:
    """"module:function" → the function, imported only when a job runs (torch and Lightning take
    seconds to import; a mistyped option is reported without them)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def hydra_entry(config_name: str, job: str, module: str) -> Callable[[], None]:
    """A console `main()` that runs `job` ("module:function") under ``@hydra.main`` and reports
    errors as one line.

    Hydra prints composition errors over several lines and exits 1; with HYDRA_FULL_ERROR set for
    the duration of composition it raises them instead, and they are reported here. The variable
    is restored before the job runs, so DDP ranks that Lightning re-launches see the user's value.
    `module` is the console script's module: Hydra names the job (and its log file) after it.
    """

    def run_job(cfg: DictConfig) -> Any:
        if os.environ.get(FULL_ERROR) == "1" and not wanted_full_error:
            del os.environ[FULL_ERROR]
        try:
            return load_job(job)(cfg)
        except Exception as exc:
            if wanted_full_error:
                raise
            fail(exc)

    run_job.__module__ = module
    hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(run_job)
    wanted_full_error = False

    def main() -> None:
        nonlocal wanted_full_error
        wanted_full_error = os.environ.get(FULL_ERROR) == "1"
        if wanted_full_error:
            hydra_main()
            return
        os.environ[FULL_ERROR] = "1"
        try:
            hydra_main()
        except Exception as exc:
            fail(exc)
        finally:
            os.environ.pop(FULL_ERROR, None)

    return main
