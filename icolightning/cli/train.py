"""`icolightning-train`: fit a model and test its best checkpoint (see conf/train.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from icolightning.lightning.run import CONFIG_DIR, train


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
