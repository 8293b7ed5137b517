"""The jobs behind the console scripts, one per file, as plain functions of their inputs (a composed
Hydra config or parsed arguments), so tests run them in-process and the entry points stay thin."""
