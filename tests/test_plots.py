"""`icolightning.plots.background_channel`: the one choice of the grey field under mask maps."""

from __future__ import annotations

from icolightning.plots import background_channel


def test_tmq_is_the_background_when_the_model_reads_it():
    assert background_channel(("U850", "V850", "TMQ", "PSL")) == 2
    assert background_channel(["TMQ"]) == 0


def test_else_the_first_input():
    assert background_channel(("U850", "PSL")) == 0
