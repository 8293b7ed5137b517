import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# The tests run many small tensor ops: on a 2-core machine intra-op threads cost more than they
# give (up to 8x slower when anything else runs). Subprocesses (DDP, CLI runs) keep their own.
torch.set_num_threads(1)
