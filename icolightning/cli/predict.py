"""`icolightning-predict ckpt_path=... input=FILE_OR_DIR output=DIR` (see conf/predict.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from icolightning.lightning.inference import predict
from icolightning.lightning.run import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
