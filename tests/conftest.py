import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# The tests run many small tensor ops: on a 2-core machine intra-op threads cost more than they
# give (up to 8x slower when anything else runs). Subprocesses (DDP, CLI runs) keep their own.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_distributed_state_left_behind():
    """An in-process fit with a DDP strategy on one device (test_option_fits' trainer=ddp rows) leaves
    torch.distributed's default group initialised and its variables (MASTER_PORT, LOCAL_RANK, ...)
    in os.environ; a later test asking whether a group exists (test_rank) must not see the group, and
    a later console-script run (which inherits os.environ) must not take those variables for a
    launcher's and wait for ranks that never come."""
    environment = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)
