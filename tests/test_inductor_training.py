"""A whole model trained through Inductor equals the eager model: the `compile: true` option of the
task modules (nn.Module.compile with the default Inductor backend), forward, backward and optimiser
steps of an IcoClassifier (scalar -> regular and regular -> regular convolutions, batch norm, hex
pooling, orientation pooling, MLP head). Two intra-op threads, because Inductor once got the corner
values of scalar outputs wrong only in its parallel loops; regular -> scalar and scalar -> scalar
convolutions are compiled on their own in test_layers. About 80 s on two cores with a cold Inductor
cache, most of it C++ compilation of the generated kernels (an IcoUNet takes twice that, and an
evaluation-mode forward would compile a third graph: both are in the slow-marked
scripts/gpu_check.py compile step)."""

from __future__ import annotations

import pytest
import torch

from icolightning.grid import IcoGrid
from icolightning.lightning import ClassificationModule

LEVEL, STEPS = 2, 3


@pytest.mark.slow  # 65-80 s of C++ compilation on 2 cores; the layers are compiled in test_layers
def test_inductor_compiled_model_trains_like_the_eager_one():
    net = {"_target_": "icolightning.models.IcoClassifier", "in_channels": 2, "num_classes": 3, "level": LEVEL,
           "widths": [4, 8], "hidden": 8}
    torch.manual_seed(0)
    eager = ClassificationModule(net, num_classes=3)
    compiled = ClassificationModule(net, num_classes=3, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x, y = torch.randn(8, 2, IcoGrid(LEVEL).num_vertices), torch.randint(0, 3, (8,))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch._dynamo.reset()
    try:
        optimisers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (eager, compiled)]
        for _ in range(STEPS):
            losses = []
            for module, optimiser in zip((eager, compiled), optimisers, strict=True):
                optimiser.zero_grad()
                loss = module._loss(module(x), y)
                loss.backward()
                optimiser.step()
                losses.append(loss.detach())
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    assert losses[0] < 1.2  # it learned something in three steps (from ln 3 = 1.10 plus noise)
