"""Runtime shims that let RecBole 1.2.1 run on torch 2.13, numpy 2, scipy >= 1.13 and ray 2.60.

Every shim names the RecBole line it fixes and is idempotent.
:func:`apply` runs on ``import recbole_ext``; Ray workers run it through :func:`setup_worker`
(``runtime_env={"worker_process_setup_hook": "recbole_ext.compat.setup_worker"}``), because monkeypatches
made in the driver process do not exist in worker processes.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
import warnings
from importlib import resources

# torch.load gets weights_only=False only when called from these packages: RecBole checkpoints pickle a
# Config object (and use pickle protocol 4), which torch >= 2.6's weights-only unpickler rejects.
TRUSTED_CALLERS = ("recbole.", "recbole_ext.")
_applied = False


def _numpy_aliases() -> None:
    """numpy 2 removed ``float_``/``complex_``/``unicode_``; RecBole's ``Config.compatibility_settings``
    (configurator.py:630) reads them on every Config to re-create the numpy-1 names ``np.float``, ``np.bool``, ...
    that metrics.py (lines 90-287), interaction.py:31 and dataset.py:652 use. Define both sets now, with the
    values RecBole assigns, so RecBole code that runs before any Config (e.g. a metric class) works too."""
    import numpy as np

    aliases = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}
    aliases.update({"bool": np.bool_, "int": np.int_, "float": np.float64, "complex": np.complex128,
                    "object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.str_})
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _torch_load() -> None:
    """trainer.py:583 (evaluate with load_best_model), :323 (resume) and quick_start.py:250
    (load_data_and_model) call ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses the
    checkpoint. Default it to False for trusted callers only, instead of the process-wide env var."""
    import torch

    if getattr(torch.load, "_recbole_ext", False):
        return
    original = torch.load

    @functools.wraps(original)
    def load(*args, **kwargs):
        if "weights_only" not in kwargs:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith(TRUSTED_CALLERS):
                kwargs["weights_only"] = False
        return original(*args, **kwargs)

    load._recbole_ext = True
    torch.load = load


def _scipy_dok_update() -> None:
    """scipy 1.13 removed ``dok_matrix._update``, which LightGCN/NGCF/NCL/GCMC/SpectralCF build their
    adjacency with (lightgcn.py:111); RecBole baselines in our benchmarks need it back."""
    import scipy.sparse as sp

    for cls in (sp.dok_matrix, getattr(sp, "dok_array", None)):
        if cls is not None and not hasattr(cls, "_update"):
            cls._update = lambda self, data: self._dict.update(data)


def _lazy(name: str):
    """A stand-in for ``sklearn.metrics.<name>`` that imports sklearn on its first call."""
    def call(*args, **kwargs):
        from sklearn import metrics

        return getattr(metrics, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _sklearn_on_use() -> None:
    """metrics.py:29-30 binds ``sklearn.metrics``' ``auc``, ``mean_absolute_error`` and ``mean_squared_error`` at
    import, and every trainer imports it: sklearn (with scipy.stats) is ~140 MB of RSS and ~1.3 s per process,
    Ray workers included, for three helpers that only the GAUC/MAE/RMSE metrics call. Import RecBole's metrics
    module while a stand-in whose helpers import the real sklearn on first call sits in ``sys.modules``, then take
    the stand-in away, so any later ``import sklearn.metrics`` gets the real module."""
    if "recbole.evaluator.metrics" in sys.modules or "sklearn.metrics" in sys.modules:
        return  # already bound, or sklearn is loaded anyway: nothing to save
    stand_in = types.ModuleType("sklearn.metrics")
    for name in ("auc", "mean_absolute_error", "mean_squared_error"):
        setattr(stand_in, name, _lazy(name))
    sys.modules["sklearn.metrics"] = stand_in
    try:
        import recbole.evaluator.metrics  # noqa: F401
    finally:
        if sys.modules.get("sklearn.metrics") is stand_in:
            del sys.modules["sklearn.metrics"]


MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                  "knowledge_aware_recommender", "exlib_recommender")  # get_model's search order (utils.py:64)


def model_file(package: str, name: str) -> bool:
    """Whether RecBole ships ``recbole/model/<package>/<name lower>.py``, found without importing the package."""
    return (resources.files("recbole.model") / package / f"{name.lower()}.py").is_file()


def _get_model_by_file() -> None:
    """utils.py:76 ``get_model`` tries ``importlib.util.find_spec`` on each model package in turn, and find_spec
    of a submodule imports its package first: general_recommender's ``__init__`` imports every general model and
    sklearn with them (~140 MB, ~1.3 s), for every model looked up, sequential ones included. The same search and
    error, by file, so only the package that holds the model is imported; plugin aliases in ``sys.modules``
    (see :mod:`recbole_ext.registry`) are found first, as find_spec finds them."""
    import recbole.utils
    import recbole.utils.utils as utils

    if getattr(utils.get_model, "_recbole_ext", False):
        return
    original = utils.get_model

    @functools.wraps(original)
    def get_model(model_name):
        for package in MODEL_PACKAGES:
            path = f"recbole.model.{package}.{model_name.lower()}"
            if path in sys.modules or model_file(package, model_name):
                return getattr(importlib.import_module(path), model_name)
        raise ValueError(f"`model_name` [{model_name}] is not the name of an existing model.")

    get_model._recbole_ext = True
    for module in (utils, recbole.utils, *(sys.modules.get(name) for name in (
            "recbole.config.configurator", "recbole.quick_start.quick_start"))):
        if module is not None and getattr(module, "get_model", None) is original:
            module.get_model = get_model


def _anomaly_mode_off() -> None:
    """sine.py:25 calls ``torch.autograd.set_detect_anomaly(True)`` at import time, and importing any
    RecBole sequential model imports it: every later backward pass runs NaN checks (SASRec: 1.7x slower).
    Import the package now, then switch the mode off again."""
    import torch
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's global switch now)

    torch.autograd.set_detect_anomaly(False)


def _warning_filters() -> None:
    """Silence exactly the known-harmless warnings RecBole emits on this stack, nothing broader."""
    # trainer.py:30 imports torch.cuda.amp; the scaler is disabled by default (enable_scaler: False)
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\..*is deprecated", category=FutureWarning)
    # thop (FLOPs count in run_recbole) still uses distutils' LooseVersion
    warnings.filterwarnings("ignore", message="distutils Version classes are deprecated", category=DeprecationWarning)
    # dataset.py:501/648/650 chained inplace fillna and :1217 Series.agg(len): correct on pandas 2.x (pinned <3)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.data\.dataset")


def apply() -> None:
    """Apply every shim once per process."""
    global _applied
    if _applied:
        return
    _numpy_aliases()
    _sklearn_on_use()
    _get_model_by_file()
    _torch_load()
    _scipy_dok_update()
    _warning_filters()
    _anomaly_mode_off()
    _applied = True


def sanitize_argv() -> None:
    """RecBole's ``Config._load_cmd_line`` turns every ``--k=v`` of the *current process* into a top-priority
    config key; in a Ray worker or under pytest those are the host's flags, not the user's."""
    sys.argv = sys.argv[:1]


def setup_worker() -> None:
    """Ray ``worker_process_setup_hook``: a clean argv in every worker process. The shims and the plugin registry
    are already there: Ray imports this hook by its dotted name, and importing ``recbole_ext.compat`` runs
    ``recbole_ext/__init__`` (:func:`apply`, then the registry) first."""
    sanitize_argv()
