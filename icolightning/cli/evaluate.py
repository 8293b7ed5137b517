"""`icolightning-eval ckpt_path=...`: test-split metrics and figures of a checkpoint (conf/eval.yaml)."""

from __future__ import annotations

from icolightning.cli.entry import hydra_entry

main = hydra_entry("eval", "icolightning.jobs.evaluate:evaluate", __name__)

if __name__ == "__main__":
    main()
