"""Where recbole_ext's data code plugs into RecBole: :func:`install_hooks` wraps RecBole's data functions once.

RecBole's ``data_preparation`` looks up ``recbole.data.utils.create_samplers`` and ``get_dataloader`` at call time,
and ``SequentialDataset`` builds its splits through ``build`` and ``_filter_by_inter_num``: wrapping those four (each
wrapper delegates to RecBole unless a plugin key is on) is enough to add the plugin's protocols and loaders to both
``recbole_ext.run`` and RecBole's own ``run_recbole``.
"""

from __future__ import annotations

from pathlib import Path

import recbole.data.utils as data_utils
from recbole.data.dataset import SequentialDataset
from recbole.utils import ModelType

from recbole_ext.data import atomic_check, ctr
from recbole_ext.data.comirec import ComiRecEvalDataLoader, comirec_build, comirec_filter
from recbole_ext.data.ctr import RegressionTrainLoader, needs_regression
from recbole_ext.data.guard import guarded
from recbole_ext.data.protocol import PHASES, FixedNegatives, FixedNegEvalDataLoader, eval_protocol, user_item_keys
from recbole_ext.data.sequential import train_loader_class
from recbole_ext.data.user_task import USER_TASK_REFUSAL, user_task_build


def _protocol_on(config) -> bool:
    return eval_protocol(config) == "fixed_negatives"


def install_hooks() -> None:
    """Install every data hook once: the fixed-negatives protocol (:mod:`recbole_ext.data.protocol`), the ComiRec
    protocol (:mod:`recbole_ext.data.comirec`), the fast train loader of sequential models
    (:mod:`recbole_ext.data.sequential`), the user-level task (:mod:`recbole_ext.data.user_task`), the CTR rules
    (:mod:`recbole_ext.data.ctr`) and the atomic-file checks (:mod:`recbole_ext.data.atomic_check`)."""
    if getattr(data_utils.get_dataloader, "_recbole_ext", False):
        return
    _wrap_samplers_and_loaders()
    _wrap_sequential_build()
    ctr.install()
    atomic_check.install()  # every atomic file checked before RecBole parses it


def _wrap_samplers_and_loaders() -> None:
    """``create_samplers``: fixed negatives for valid/test; ``get_dataloader``: the plugin's loader of each phase."""
    create_samplers, get_dataloader = data_utils.create_samplers, data_utils.get_dataloader

    def create_samplers_hook(config, dataset, built_datasets):
        samplers = create_samplers(config, dataset, built_datasets)
        if not _protocol_on(config):
            return samplers
        seen = None
        if not all((Path(config["data_path"]) / f"{config['dataset']}.{p}.neg").is_file() for p in PHASES):
            seen = user_item_keys(built_datasets, dataset.uid_field, dataset.iid_field,
                                  dataset.item_id_list_field, dataset.item_num)
        return (samplers[0], *(FixedNegatives(config, dataset, built_datasets, p, seen) for p in PHASES))

    def get_dataloader_hook(config, phase):
        if phase in PHASES and _protocol_on(config):
            return FixedNegEvalDataLoader
        if phase in PHASES and eval_protocol(config) == "comirec":
            return ComiRecEvalDataLoader
        if phase == "train" and needs_regression(config):
            return RegressionTrainLoader
        if phase == "train" and config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            loader = train_loader_class(config) or get_dataloader(config, phase)
            return guarded(loader, USER_TASK_REFUSAL) if config["task"] == "user_classification" else loader
        return get_dataloader(config, phase)

    create_samplers_hook._recbole_ext = get_dataloader_hook._recbole_ext = True
    data_utils.create_samplers, data_utils.get_dataloader = create_samplers_hook, get_dataloader_hook


def _wrap_sequential_build() -> None:
    """``SequentialDataset.build``: the user-level task's or ComiRec's split; ``_filter_by_inter_num``: ComiRec's
    one-pass filter first (RecBole's intervals still apply when set)."""
    build, inter_num_filter = SequentialDataset.build, SequentialDataset._filter_by_inter_num

    def build_hook(self):
        if self.config["task"] == "user_classification":
            return user_task_build(self)
        return comirec_build(self) if eval_protocol(self.config) == "comirec" else build(self)

    def filter_hook(self):
        if eval_protocol(self.config) == "comirec":
            comirec_filter(self)
        inter_num_filter(self)

    SequentialDataset.build, SequentialDataset._filter_by_inter_num = build_hook, filter_hook
