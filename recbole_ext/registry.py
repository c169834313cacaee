"""Model discovery: entry points of the group ``recbole.models`` become models RecBole itself can find.

No RecBole source is patched. Three hooks, all on RecBole's documented lookup paths:

* **model**: the model's module is aliased as ``recbole.model.<type>_recommender.<name lower>`` in
  ``sys.modules``; ``recbole.utils.get_model`` (RecBole's find_spec search, or compat's by-file one) looks there
  first, so every caller (Config, run_recbole, load_data_and_model, ...) finds it.
* **trainer**: ``recbole.trainer.<Name>Trainer`` is what ``recbole.utils.get_trainer`` looks up. A model either
  declares one (entry-point group ``recbole.trainers``, key = model name) or gets RecBole's ``Trainer`` with the
  plugin's evaluation protocols mixed in.
* **config**: ``Config._load_internal_config_dict`` is wrapped so the model's YAML, then the protocol preset it
  asks for, land after RecBole's built-in defaults and before user files/dicts/command line (user config wins),
  the same place RecBole-GNN puts its YAMLs (``properties/overall.yaml``, the plugin-wide keys, comes first). Every
  value is then checked by :mod:`recbole_ext.validation` (types, choices, ranges, unknown keys), so a bad value
  fails before any data is loaded, naming the key.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path

import recbole.trainer
from recbole.config.configurator import Config
from recbole.model.abstract_recommender import AbstractRecommender
import recbole.utils

from recbole_ext import properties, validation
from recbole_ext.compat import model_file
from recbole_ext.data.ctr import RAW_SCORE_MODELS, needs_regression
from recbole_ext.data.hooks import install_hooks
from recbole_ext.evaluation import register_metrics
from recbole_ext.model.context_aware.ifm import fm_stage_model
from recbole_ext.model.context_aware.regression import regress_raw_score
from recbole_ext.model.user_task import for_user_task
from recbole_ext.trainer.base import default_trainer

MODEL_GROUP = "recbole.models"
TRAINER_GROUP = "recbole.trainers"
_SUBMODULES = {
    "GENERAL": "general_recommender",
    "SEQUENTIAL": "sequential_recommender",
    "CONTEXT": "context_aware_recommender",
    "KNOWLEDGE": "knowledge_aware_recommender",
}
# exlib_recommender is left out: its __init__ imports lightgbm and xgboost, which are optional.
_BUILTIN_SUBMODULES = tuple(_SUBMODULES.values())

MODELS: dict[str, type] = {}
_YAMLS: dict[str, Path] = {}


class RegistryError(RuntimeError):
    """A plugin model cannot be registered (name clash, bad entry point)."""


def _find_yaml(cls: type) -> Path | None:
    """``<Name>.yaml``: ours in properties/model/; another distribution's beside its module or in its
    top-level package's properties/model/."""
    if cls.__module__.startswith("recbole_ext."):
        candidates = [properties.FOLDER / "model" / f"{cls.__name__}.yaml"]
    else:
        module_file = Path(sys.modules[cls.__module__].__file__)
        top = module_file.parents[max(cls.__module__.count("."), 1) - 1]
        candidates = [module_file.with_name(f"{cls.__name__}.yaml"), top / "properties" / "model" / f"{cls.__name__}.yaml"]
    return next((path for path in candidates if path.is_file()), None)


def _builtin_clash(name: str) -> str | None:
    for sub in _BUILTIN_SUBMODULES:
        alias = f"recbole.model.{sub}.{name.lower()}"
        module = sys.modules.get(alias)
        if module is not None and getattr(module, "__recbole_ext_alias__", False):
            continue
        if model_file(sub, name):  # not find_spec: it imports the package, and with it every model it holds
            return alias
    return None


def register_model(cls: type, trainer: type | None = None) -> None:
    """Make ``cls`` a RecBole model found by name. Idempotent for the same class."""
    name = cls.__name__
    if MODELS.get(name) is cls:
        return
    if name in MODELS:
        raise RegistryError(f"model name {name!r} is registered twice ({MODELS[name].__module__} and {cls.__module__})")
    clash = _builtin_clash(name)
    if clash:
        raise RegistryError(f"plugin model {name!r} ({cls.__module__}) collides with RecBole's built-in {clash}; rename the class")
    model_type = getattr(getattr(cls, "type", None), "name", None)
    if model_type not in _SUBMODULES:
        raise RegistryError(f"{cls.__module__}.{name} needs a class attribute `type` (a recbole.utils.ModelType)")
    module = sys.modules[cls.__module__]
    module.__recbole_ext_alias__ = True
    sys.modules[f"recbole.model.{_SUBMODULES[model_type]}.{name.lower()}"] = module

    if trainer is None and not hasattr(recbole.trainer, f"{name}Trainer"):
        trainer = default_trainer(cls)
    if trainer is not None:
        setattr(recbole.trainer, f"{name}Trainer", trainer)
    yaml = _find_yaml(cls)
    if yaml is not None:
        _YAMLS[name] = yaml
    MODELS[name] = cls


def _load_group(group: str) -> dict[str, object]:
    loaded = {}
    for ep in entry_points(group=group):
        try:
            loaded[ep.name] = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the others down silently
            raise RegistryError(f"entry point {ep.name!r} = {ep.value!r} ({group}) failed to load: {exc}") from exc
    return loaded


def register_all() -> None:
    """Register every model declared under the ``recbole.models`` entry-point group (any distribution)."""
    trainers = _load_group(TRAINER_GROUP)
    for name, cls in _load_group(MODEL_GROUP).items():
        if getattr(cls, "__name__", None) != name:
            raise RegistryError(f"entry point {name!r} must point to a class of the same name, got {cls!r}")
        register_model(cls, trainers.get(name))
    _wrap_config()
    install_hooks()
    register_metrics()


def _wrap_config() -> None:
    if getattr(Config._load_internal_config_dict, "_recbole_ext", False):
        return
    original = Config._load_internal_config_dict

    def _load_internal_config_dict(self, model, model_class, dataset):
        original(self, model, model_class, dataset)
        self._update_internal_config_dict(str(properties.FOLDER / "overall.yaml"))
        if model in _YAMLS:
            self._update_internal_config_dict(str(_YAMLS[model]))
        merged = {**self.internal_config_dict, **self.external_config_dict}
        protocol = merged.get("protocol")
        if protocol not in (None, "recbole"):
            preset = properties.FOLDER / "protocol" / f"{protocol}.yaml"
            if not preset.is_file():
                raise ValueError(f"protocol: unknown value {protocol!r}; choose one of {properties.protocols()}")
            self._update_internal_config_dict(str(preset))
        if merged.get("task") == "user_classification":  # one row per user, the label a user field
            self._update_internal_config_dict(str(properties.FOLDER / "protocol" / "user_classification.yaml"))
            self.internal_config_dict["LABEL_FIELD"] = label = merged.get("label")
            given = self.external_config_dict if "load_col" in self.external_config_dict else self.internal_config_dict
            columns = given.get("load_col")
            if isinstance(columns, dict) and label and label not in columns.get("user", []):  # load the label too
                uid = merged.get("USER_ID_FIELD", "user_id")
                given["load_col"] = {**columns, "user": [*dict.fromkeys([uid, *columns.get("user", []), label])]}
        if protocol == "libfm" and model not in RAW_SCORE_MODELS \
                and "MSE" not in getattr(model_class, "config_choices", {}).get("loss_type", ()):
            raise ValueError(f"protocol libfm: {model} cannot regress ±1 labels; use IFM, INN, DeepIFM or one of "
                             f"RecBole's {', '.join(sorted(RAW_SCORE_MODELS))}, or 0/1 labels (protocol ctr)")
        validation.check(model, model_class, self.internal_config_dict, self.external_config_dict,
                         set(self.variable_config_dict) | set(self.cmd_config_dict), dataset=dataset)

    _load_internal_config_dict._recbole_ext = True
    Config._load_internal_config_dict = _load_internal_config_dict


def build_model(config, dataset):
    """A fresh model of ``config["model"]`` on ``dataset``, as RecBole builds it; RecBole's CTR models regress
    ±1 labels on their raw score under ``loss_type: MSE`` (protocol libfm); under ``task: user_classification`` a
    model without a user head gets one (:mod:`recbole_ext.model.user_task`); the FM stage of an IFM run (its
    ``-fm.pth``, whose config has IFM's ``fm_batch_norm``) is the reference FM it trained. Every entry point builds
    through here."""
    model = recbole.utils.get_model(config["model"])(config, dataset).to(config["device"])  # compat patches get_model
    if config["model"] == "FM" and config["fm_batch_norm"] is not None:
        return fm_stage_model(model, config)
    return regress_raw_score(model) if needs_regression(config) else for_user_task(config, dataset, model)


def builtin_models() -> list[str]:
    """Class names of RecBole's own models (exlib models need lightgbm/xgboost and are left out)."""
    names = set()
    for sub in _BUILTIN_SUBMODULES:
        package = importlib.import_module(f"recbole.model.{sub}")
        for attr, value in vars(package).items():
            if isinstance(value, type) and issubclass(value, AbstractRecommender) and attr not in MODELS:
                names.add(attr)
    return sorted(names)


def check_model(name: str) -> None:
    """Fail with one line listing what exists, instead of RecBole's ``No module named 'lightgbm'``."""
    if name in MODELS or any(model_file(sub, name) and hasattr(
            importlib.import_module(f"recbole.model.{sub}.{name.lower()}"), name) for sub in _BUILTIN_SUBMODULES):
        return  # imports only the package that holds the model (builtin_models imports them all)
    raise ValueError(
        f"unknown model {name!r}. Plugin models: {', '.join(sorted(MODELS))}. "
        f"RecBole models: {', '.join(builtin_models())}"
    )

