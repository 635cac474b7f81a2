"""The layout's naming rules (ARCHITECTURE.md, Conventions): every module imports the ordinary way."""

from __future__ import annotations

import pkgutil
import sys
import types

import tunelab


def top_level_modules() -> set[str]:
    return {module.name for module in pkgutil.iter_modules(tunelab.__path__)}


def test_no_top_level_module_shares_a_standard_library_name():
    assert not top_level_modules() & sys.stdlib_module_names


def test_no_name_tunelab_exports_is_also_a_module():
    # A sub-module's first import rebinds its name on the package: an exported function of that name would be replaced.
    assert not set(tunelab.__all__) & top_level_modules()


def test_modules_import_the_ordinary_way():
    # `import a.b.c as x` resolves through the attribute a.b: it fails when a function hides the package.
    import tunelab.evaluation.metrics as metrics
    import tunelab.prediction as prediction
    import tunelab.training.classify as classify

    assert all(isinstance(module, types.ModuleType) for module in (metrics, prediction, classify))
    assert callable(tunelab.train) and callable(tunelab.predict) and callable(tunelab.evaluate)
