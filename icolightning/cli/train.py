"""`icolightning-train`: fit a model and test its best checkpoint (see conf/train.yaml)."""

from __future__ import annotations

from icolightning.cli.entry import hydra_entry

main = hydra_entry("train", "icolightning.jobs.train:train", __name__)

if __name__ == "__main__":
    main()
