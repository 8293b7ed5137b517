"""`icolightning-predict ckpt_path=... input=FILE_OR_DIR output=DIR` (see conf/predict.yaml)."""

from __future__ import annotations

from icolightning.cli.entry import hydra_entry

main = hydra_entry("predict", "icolightning.jobs.predict:predict", __name__)

if __name__ == "__main__":
    main()
