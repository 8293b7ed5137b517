"""Which process this is among the ranks of a run: one answer for samplers, layers and configs.

The process group is the truth once it exists (Lightning initialises it when the strategy is set
up, before any dataloader or forward pass). Before that, e.g. while Hydra composes the config,
only the launcher's environment can tell: `RANK`/`WORLD_SIZE` (torchrun, torchelastic), else
`SLURM_PROCID`/`SLURM_NTASKS` (srun). Lightning's own DDP launcher is deliberately not read
(`LOCAL_RANK`): the processes it starts get their own Hydra job name and output folder already.

torch is not imported here (the console scripts read the rank while composing the config, before
they know whether a job runs): a process group can only exist once `torch.distributed` was imported.
"""

from __future__ import annotations

import os
import sys

LAUNCHER_VARIABLES = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
"""(rank, world size) environment variables, in the order they are trusted."""


def launcher_rank_and_world() -> tuple[int, int]:
    """(rank, world size) that the launcher put in the environment, (0, 1) without a launcher."""
    for rank, world in LAUNCHER_VARIABLES:
        if rank in os.environ:
            return int(os.environ[rank]), int(os.environ.get(world, "1"))
    return 0, 1


def rank_and_world(group: object | None = None, environment: bool = True) -> tuple[int, int]:
    """(rank, world size) in the initialised process group (or `group`), else the launcher's.

    `environment=False` answers (0, 1) without a process group: for code whose ranks must talk
    to each other (a sampler whose shares are gathered, a synchronised batch norm), a rank that
    exists only in the environment has nobody to talk to.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return launcher_rank_and_world() if environment else (0, 1)
