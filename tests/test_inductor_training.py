"""A whole model trained through Inductor equals the eager model: the `compile: true` option of the
task modules (nn.Module.compile with the default Inductor backend), forward, backward and optimiser
steps. Two intra-op threads, because Inductor once got the corner values of scalar outputs wrong only
in its parallel loops (the S2R network has scalar -> regular and regular -> scalar convolutions; add
"S2S" to the variants for scalar -> scalar ones once the strict xfail below is lifted)."""

from __future__ import annotations

import pytest
import torch

from icolightning.grid import IcoGrid
from icolightning.lightning import SegmentationModule

LEVEL, STEPS = 2, 3


@pytest.mark.xfail(raises=torch._dynamo.exc.InternalTorchDynamoError, strict=True,
                   reason="Dynamo cannot yet trace the gauge padding's autograd Function in a training forward "
                   "(an intermediate of _GaugePadFunction aliases its output); icolightning/nn is issue10's")
@pytest.mark.parametrize("variant", ["S2R"])
def test_inductor_compiled_model_trains_like_the_eager_one(variant):
    net = {"_target_": "icolightning.models.IcoUNet", "in_channels": 3, "num_classes": 3, "level": LEVEL,
           "widths": [4, 8], "variant": variant}
    torch.manual_seed(0)
    eager = SegmentationModule(net, loss="ce")
    compiled = SegmentationModule(net, loss="ce", compile=True)
    compiled.load_state_dict(eager.state_dict())
    n = IcoGrid(LEVEL).num_vertices
    x, y = torch.randn(4, 3, n), torch.randint(0, 3, (4, n))
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
        eager.eval()
        compiled.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    assert losses[0] < 1.2  # it learned something in three steps (from ln 3 = 1.10 plus noise)
