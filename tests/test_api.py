"""The Python API of the README: `asrkd.train`, `asrkd.evaluate`, ... are the functions, whatever
asrkd's own modules have been imported before."""

from __future__ import annotations

import types

import asrkd
import asrkd.evaluation
import asrkd.training
import asrkd.transcribe


def test_every_api_name_is_the_function_not_a_module() -> None:
    """With asrkd's modules imported (as by any run): asrkd.train and asrkd.evaluate were once
    also module names, and importing the module put it on the package in the function's place
    (the README's `asrkd.evaluate(...)` after `asrkd.train(cfg)`: 'module' is not callable)."""
    for name in asrkd.__all__:
        value = getattr(asrkd, name)
        assert callable(value) and not isinstance(value, types.ModuleType), name
    assert asrkd.train is asrkd.training.train
    assert asrkd.evaluate is asrkd.evaluation.evaluate
