"""Every configuration value is checked here, once, before any data is loaded (called from the registry's Config hook).

* **types** come from the defaults in the YAMLs (RecBole's, the model's, the protocol preset's): a key whose default
  is an int must get an int, a float a number, a bool a bool, a list a list (a single value is accepted where RecBole
  accepts one, e.g. ``topk: 10``). ``--epochs=abc`` fails naming ``epochs`` instead of deep inside training;
* **choices**: a model's ``config_choices`` (key -> allowed values);
* **ranges**: ``RANGES`` for the keys every model shares, plus a model's ``config_ranges`` (key -> interval such as
  ``"[1, inf)"`` or ``"[0, 1)"``): ``n_interests: 0`` or a negative dropout fails up front;
* **unknown keys** given as ``config_dict`` or on the command line (``--epoch=5`` for ``--epochs``) fail with the
  closest known key: RecBole would silently ignore them. Known = every key of every YAML that RecBole and this package
  ship, plus the few RecBole sets itself. Keys inside ``--config_files`` are not checked (a user's own code may read
  them);
* **values that depend on others** (:func:`check_dependent`; each used to fail after a full epoch): ``valid_metric``
  must be one of the results ``metrics`` × ``topk`` produce, ``eval_neg_num`` + 1 candidates must reach the largest
  ``topk`` under fixed negatives (unless the dataset ships its own), ``checkpoint_dir`` must be writable (or
  creatable); ``protocol: ctr`` needs a model that is not sequential;
* **sweep values** (:func:`check_value`, from :func:`recbole_ext.tune.check_space`): each value a search space can
  give, as a single key.
"""

from __future__ import annotations

import difflib
import math
import re
from functools import lru_cache
from pathlib import Path

import yaml

from recbole_ext.files import check_writable
from recbole_ext.properties import FOLDER

# keys every model shares; a model's own ranges live on its class (``config_ranges``)
RANGES = {
    "epochs": "[1, inf)", "train_batch_size": "[1, inf)", "eval_batch_size": "[1, inf)", "learning_rate": "[0, inf)",
    "weight_decay": "[0, inf)", "embedding_size": "[1, inf)", "stopping_step": "[1, inf)", "eval_step": "[0, inf)",
    "MAX_ITEM_LIST_LENGTH": "[1, inf)", "eval_neg_num": "[1, inf)", "time_budget": "[0, inf)",
    "dropout_prob": "[0, 1)", "hidden_dropout_prob": "[0, 1)", "attn_dropout_prob": "[0, 1)",
    "distributed_workers": "[0, inf)",
}
# choices of the keys every model shares (properties/overall.yaml); a model's own live on its class
CHOICES = {"stopping_rule": ("recbole", "rechorus"), "train_neg_exclude": ("positive", "history"),
           "sequential_loader": ("fast", "recbole"), "distributed_batch": ("global", "per_worker"),
           "lr_scaling": ("none", "linear", "sqrt"), "task": ("next_item", "user_classification")}
# keys RecBole reads or sets without a YAML default
RECBOLE_RUNTIME = {"gpu_id", "device", "local_rank", "nproc", "world_size", "offset", "ip", "port", "verbose",
                   "encoding", "single_spec", "eval_type", "MODEL_INPUT_TYPE", "valid_neg_sample_args",
                   "test_neg_sample_args", "config_files", "model", "dataset"}
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


@lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    import recbole

    keys = set(RECBOLE_RUNTIME)
    for folder in (Path(recbole.__file__).parent / "properties", FOLDER):
        for path in folder.rglob("*.yaml"):
            loaded = yaml.safe_load(path.read_text())
            if isinstance(loaded, dict):
                keys.update(loaded)
    return frozenset(keys)


def read_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold ``key: value`` lines; a missing, malformed, empty or list-shaped file is a one-line
    error naming ``what`` (the flag) and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"{what}: {path} is not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(loaded, dict):
        shape = "empty" if loaded is None else f"a {type(loaded).__name__}, not key: value lines"
        raise ValueError(f"{what}: {path} is {shape}; write one 'key: value' per line")
    return loaded


def in_interval(value: float, interval: str) -> bool:
    match = _INTERVAL.match(interval)
    if not match:
        raise ValueError(f"bad interval {interval!r}; write e.g. '[1, inf)'")
    left, low, high, right = match.groups()
    low, high = float(low), float(high)
    return (value >= low if left == "[" else value > low) and (value <= high if right == "]" else value < high)


def _fits(value, default) -> bool:
    if value is None or default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) or (bool(default) and _fits(value, default[0]))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, (str, int, float, tuple))  # RecBole casts e.g. gpu_id (2,3 -> "2,3") to str itself


def _kind(default) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}.get(
        type(default), type(default).__name__)


def check_value(model: str, model_class: type, defaults: dict, key: str, value) -> None:
    """One value a sweep may give ``key``, checked as :func:`check` checks a whole configuration: a known key, its
    type, choices and range (each bad value used to fail its trial, after Ray had started)."""
    if key not in known_keys() and key not in defaults:
        close = difflib.get_close_matches(key, known_keys() | set(defaults), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown config key {key!r}: {hint}RecBole would ignore it, so every trial would be the same")
    if not _fits(value, defaults.get(key)):
        raise ValueError(f"{key}: {value!r} is not {_kind(defaults[key])} (its default is {defaults[key]!r})")
    choices = {**CHOICES, **getattr(model_class, "config_choices", {})}.get(key)
    if choices is not None and value not in choices:
        raise ValueError(f"{key}: {value!r} is not valid for {model}; choose one of {list(choices)}")
    interval = {**RANGES, **getattr(model_class, "config_ranges", {})}.get(key)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if interval and numeric and not in_interval(value, interval):
        raise ValueError(f"{key}: {value!r} is out of range for {model}; it must lie in {interval}")


def check(model: str, model_class: type, defaults: dict, given: dict, checked_names: set[str],
          dataset: str | None = None) -> None:
    """``defaults``: the internal config (YAMLs); ``given``: every external value; ``checked_names``: the external
    keys that must be known (config_dict and command line); ``dataset``: the run's dataset (for the files a check
    looks at). Raises ValueError naming the key and the fix."""
    for key in sorted(checked_names - known_keys() - set(defaults)):
        close = difflib.get_close_matches(key, known_keys() | set(defaults), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown config key {key!r}: {hint}RecBole would ignore it (keys only your own code reads "
                         "belong in a --config_files YAML)")
    for key, value in given.items():
        if not _fits(value, defaults.get(key)):
            raise ValueError(f"{key}: {value!r} is not {_kind(defaults[key])} (its default is {defaults[key]!r})")
    merged = {**defaults, **given}
    check_protocol(model, model_class, merged)  # before the choices: a preset's loss_type would be blamed instead
    for key, choices in {**CHOICES, **getattr(model_class, "config_choices", {})}.items():
        if merged.get(key) not in choices:
            raise ValueError(f"{key}: {merged.get(key)!r} is not valid for {model}; choose one of {list(choices)}")
    for key, interval in {**RANGES, **getattr(model_class, "config_ranges", {})}.items():
        value = merged.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not in_interval(value, interval):
            raise ValueError(f"{key}: {value!r} is out of range for {model}; it must lie in {interval}")
    check_dependent(merged, dataset)


def check_protocol(model: str, model_class: type, merged: dict) -> None:
    """Protocol ctr labels rating rows for context-aware models; a sequential model cannot train on them."""
    from recbole.utils import ModelType

    if merged.get("protocol") == "ctr" and getattr(model_class, "type", None) == ModelType.SEQUENTIAL:
        raise ValueError(f"protocol ctr: {model} is a sequential model, and protocol ctr (labelled rating rows) is for "
                         "context-aware models (IFM, INN, DeepIFM, MARIF, RecBole's FM, DeepFM, ...); for "
                         f"{model} use protocol rechorus, comirec or recbole")


def check_dependent(merged: dict, dataset: str | None = None) -> None:
    """Values that are wrong only together, each of which used to fail after a full epoch or at the first save."""

    _check_valid_metric(merged)
    _check_eval_negatives(merged, dataset)
    if merged.get("checkpoint_dir"):
        check_writable(merged["checkpoint_dir"], "checkpoint_dir", create=True)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def computed_metrics(metrics, topk) -> list[str] | None:
    """The results an evaluation with ``metrics`` and ``topk`` produces (``NDCG@5``, ``AUC``; RecBole compares them
    in lower case); None when a metric is unknown (RecBole names it itself)."""
    from recbole.evaluator.register import metric_types, metrics_dict
    from recbole.utils import EvaluatorType

    keys = []
    for metric in _as_list(metrics):
        name = str(metric).lower()
        if name not in metrics_dict:
            return None
        # value metrics (AUC, RMSE, ...) and GAUC (a mean rank) give one number; every other metric one per k
        single = metric_types.get(name) == EvaluatorType.VALUE or "rec.meanrank" in metrics_dict[name].metric_need
        keys += [str(metric)] if single else [f"{metric}@{k}" for k in _as_list(topk)]
    return keys


def _check_valid_metric(merged: dict) -> None:
    metric = merged.get("valid_metric")
    keys = computed_metrics(merged.get("metrics"), merged.get("topk"))
    if not metric or keys is None or str(metric).lower() in {key.lower() for key in keys}:
        return
    name, _, k = str(metric).lower().partition("@")
    names = {key.lower().split("@")[0] for key in keys}
    hint = f" or add {k} to topk" if k and name in names else " or add it to metrics" if name not in names else ""
    raise ValueError(f"valid_metric: {metric!r} is not computed with metrics {merged.get('metrics')} and topk "
                     f"{merged.get('topk')}; choose one of {', '.join(keys)}{hint}")


def _check_eval_negatives(merged: dict, dataset: str | None) -> None:
    """Fixed-negative ranking scores the target and eval_neg_num sampled negatives per row: topk above that count
    fails inside torch.topk after an epoch. Shipped <dataset>.valid.neg/.test.neg lists replace the sampling."""
    if merged.get("eval_protocol") != "fixed_negatives" or not isinstance(merged.get("eval_neg_num"), int):
        return
    folder = Path(str(merged.get("data_path") or "dataset/")) / str(dataset)
    # both lists shipped: nothing is sampled; with one missing, that split still samples eval_neg_num per row
    if dataset and all((folder / f"{dataset}.{phase}.neg").is_file() for phase in ("valid", "test")):
        return
    largest = max((k for k in _as_list(merged.get("topk")) if isinstance(k, int)), default=0)
    if merged["eval_neg_num"] + 1 < largest:
        count = merged["eval_neg_num"]
        raise ValueError(f"eval_neg_num: {count} negatives + the target rank {count + 1} candidates, fewer than topk "
                         f"{largest}; set eval_neg_num to at least {largest - 1} or lower topk")
