"""`icolightning-predict ckpt_path=... input=FILE_OR_DIR output=DIR` (see conf/predict.yaml)."""

from __future__ import annotations

from icolightning.cli.entry import hydra_entry
from icolightning.lightning.inference import predict

main = hydra_entry("predict", predict, __name__)

if __name__ == "__main__":
    main()
