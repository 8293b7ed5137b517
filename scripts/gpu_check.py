"""The Python pieces of scripts/gpu_check.sh, each printing one JSON object (also usable on CPU):

    python scripts/gpu_check.py equivariance --device cuda   # IcoUNet, all 60 rotations, float32
    python scripts/gpu_check.py compile --device cuda        # torch.compile vs eager: agreement and speed
    python scripts/gpu_check.py determinism --device cuda    # which ops are non-deterministic, and what
                                                             # torch.use_deterministic_algorithms does
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

from icolightning.grid import IcoGrid
from icolightning.models import IcoUNet
from icolightning.nn import check_equivariance

EQUIVARIANCE_TOL_FLOAT32 = 1e-5
"""Relative error bound in float32: 1.4e-6 measured on CPU at levels 2 and 3 (float64 reaches 1e-10
in the tests); TF32 is switched off for the check, so CUDA rounds like float32 too."""


def _unet(level: int, device: torch.device, widths: tuple[int, ...] = (8, 16)) -> IcoUNet:
    torch.manual_seed(0)
    model = IcoUNet(4, 3, level=level, widths=widths).to(device)
    with torch.no_grad():  # non-zero biases everywhere, so no symmetry is hidden by zeros
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.dim() == 1:
                p.normal_()
    return model


def _inputs(level: int, device: torch.device, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(batch, 4, IcoGrid(level).num_vertices, generator=generator).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def equivariance_report(device: torch.device, level: int = 3) -> dict:
    """max over the 60 rotations g of |f(x∘g) − f(x)∘g| / max|f(x)|, float32, eval mode."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = _unet(level, device).eval()
    with torch.no_grad():
        error = check_equivariance(model, level, 4, tolerance=None, x=_inputs(level, device))
    return {"check": "equivariance", "device": str(device), "dtype": "float32", "level": level, "rotations": 60,
            "max_relative_error": error, "tolerance": EQUIVARIANCE_TOL_FLOAT32, "ok": error < EQUIVARIANCE_TOL_FLOAT32}


def _median_ms(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def check_compile(device: torch.device, level: int = 5, batch: int = 8, repeats: int = 20) -> dict:
    """torch.compile of the U-Net against eager: output agreement (eval) and forward+backward time (train)."""
    model = _unet(level, device, widths=(16, 32, 64))
    x = _inputs(level, device, batch)
    compiled = torch.compile(model)
    model.eval()
    with torch.no_grad():
        eager_out = model(x)
        started = time.perf_counter()
        compiled_out = compiled(x)
        _sync(device)
        compile_seconds = time.perf_counter() - started
    error = ((compiled_out - eager_out).abs().max() / eager_out.abs().max()).item()
    model.train()

    def step(net: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            loss = net(x).square().mean()
            loss.backward()
            return loss
        return run

    for fn in (step(model), step(compiled)):  # warm-up (and the training graph's compilation)
        fn()
    eager_ms = _median_ms(step(model), device, repeats)
    compiled_ms = _median_ms(step(compiled), device, repeats)
    return {"check": "compile", "device": str(device), "level": level, "batch": batch, "widths": [16, 32, 64],
            "eval_max_relative_difference": error, "first_call_seconds": round(compile_seconds, 2),
            "train_step_ms_eager": round(eager_ms, 3), "train_step_ms_compiled": round(compiled_ms, 3),
            "speedup": round(eager_ms / compiled_ms, 3), "ok": error < 1e-3}


def _gradients(model: IcoUNet, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One training forward and backward (weighted cross-entropy as in training); all gradients, flat."""
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), target, weight=torch.tensor([0.2, 3.0, 1.5], device=x.device))
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def check_determinism(device: torch.device, level: int = 4, batch: int = 4) -> dict:
    """Two identical training steps compared bit for bit, without and with deterministic algorithms.

    `trainer.deterministic=true` makes Lightning call `torch.use_deterministic_algorithms(True)` and set
    CUBLAS_WORKSPACE_CONFIG=:4096:8; here the same is done by hand. `warn_only=True` lists the ops
    that have no deterministic implementation (as warnings); `warn_only=False` is what Lightning sets,
    and any such op then raises.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    model = _unet(level, device, widths=(8, 16)).train()
    x = _inputs(level, device, batch)
    target = torch.randint(0, 3, (batch, x.shape[-1]), generator=torch.Generator().manual_seed(1)).to(device)
    report: dict = {"check": "determinism", "device": str(device), "level": level, "batch": batch}
    first, second = _gradients(model, x, target), _gradients(model, x, target)
    report["default_max_gradient_difference"] = (first - second).abs().max().item()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.use_deterministic_algorithms(True, warn_only=True)
            _gradients(model, x, target)
        report["nondeterministic_ops_warned"] = sorted({str(w.message).split("\n")[0] for w in caught
                                                        if "deterministic" in str(w.message)})
        torch.use_deterministic_algorithms(True)
        try:
            first, second = _gradients(model, x, target), _gradients(model, x, target)
            report["deterministic_error"] = None
            report["deterministic_max_gradient_difference"] = (first - second).abs().max().item()
        except RuntimeError as error:
            report["deterministic_error"] = str(error).split("\n")[0]
    finally:
        torch.use_deterministic_algorithms(False)
    report["ok"] = report["deterministic_error"] is None and report.get("deterministic_max_gradient_difference") == 0
    return report


CHECKS = {"equivariance": equivariance_report, "compile": check_compile, "determinism": check_determinism}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--level", type=int, default=None, help="grid level (default: the check's own)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    kwargs = {} if args.level is None else {"level": args.level}
    result = CHECKS[args.check](torch.device(args.device), **kwargs)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
