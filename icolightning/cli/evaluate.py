"""`icolightning-eval ckpt_path=...`: test-split metrics and figures of a checkpoint (conf/eval.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from icolightning.lightning.run import CONFIG_DIR, evaluate


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
