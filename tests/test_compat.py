"""Each shim of recbole_ext.compat, checked against the failure it exists for."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_ext import compat


def test_numpy_names_recbole_needs_exist_and_config_builds():
    from recbole.config import Config

    for name in ("float_", "complex_", "unicode_"):
        assert name in np.__dict__
    Config(model="BPR", dataset="ml-100k", config_dict={"state": "ERROR"})
    assert np.float is np.float64  # re-created by RecBole's compatibility_settings, used in its metrics


def test_torch_load_trusts_only_recbole_callers(tmp_path):
    path = tmp_path / "ckpt.pth"
    from recbole.config import Config

    config = Config(model="BPR", dataset="ml-100k", config_dict={"state": "ERROR"})
    torch.save({"config": config, "w": torch.ones(2)}, path, pickle_protocol=4)  # as Trainer._save_checkpoint
    with pytest.raises(pickle.UnpicklingError):  # a third-party caller keeps torch's safe default
        torch.load(path)
    scope = {"__name__": "recbole.trainer.trainer", "torch": torch, "path": path}
    exec("state = torch.load(path)", scope)  # what RecBole's Trainer.evaluate does
    assert torch.equal(scope["state"]["w"], torch.ones(2))


def test_anomaly_mode_is_off_after_recbole_sequential_import():
    import recbole.model.sequential_recommender.sine  # noqa: F401  (switches it on at import)
    from recbole.utils import get_model

    get_model("SASRec")
    assert not torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(True)
    compat._anomaly_mode_off()
    assert not torch.is_anomaly_enabled()


def test_scipy_dok_update_is_back():
    m = sp.dok_matrix((2, 2))
    m._update({(0, 1): 3.0})
    assert m[0, 1] == 3.0


def test_apply_is_idempotent():
    load = torch.load
    compat._applied = False
    compat.apply()
    assert torch.load is load  # not wrapped twice


def test_pandas_pin_fills_missing_cells(tmp_path):
    """RecBole's inplace fillna is a silent no-op on pandas 3; the pin (<3) keeps missing floats filled."""
    import pandas as pd
    from recbole.config import Config
    from recbole.data import create_dataset

    assert int(pd.__version__.split(".")[0]) < 3
    folder = tmp_path / "d" / "toy"
    folder.mkdir(parents=True)
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"u{i % 3}\ti{i}\n" for i in range(9)))
    (folder / "toy.item").write_text("item_id:token\tprice:float\ttags:token_seq\n"
                                     "i0\t1.0\ta b\ni1\t\t\ni2\t3.0\tc\n")
    config = Config(model="BPR", dataset="toy", config_dict={
        "data_path": str(tmp_path / "d"), "state": "ERROR",
        "load_col": {"inter": ["user_id", "item_id"], "item": ["item_id", "price", "tags"]}})
    data = create_dataset(config)
    price = dict(zip(data.item_feat["item_id"], data.item_feat["price"]))
    assert not any(np.isnan(v) for v in price.values())
    ids = data.token2id("item_id", ["i0", "i1", "i2"])
    assert [price[i] for i in ids] == pytest.approx([1.0, 2.0, 3.0])  # i1's missing price = the mean


def test_sklearn_is_loaded_only_when_a_metric_needs_it():
    """RecBole binds three sklearn helpers at import (~140 MB per process): after ``import recbole_ext`` and a
    sequential model's lookup sklearn is still unloaded, and RecBole's AUC/MAE/RMSE give sklearn's numbers."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, recbole_ext\n"
        "from recbole.utils import get_model\n"
        "from recbole.config import Config\n"
        "assert get_model('SASRec').__name__ == 'SASRec' and get_model('TiMiRec').__name__ == 'TiMiRec'\n"
        "Config(model='SASRec', dataset='ml-100k', config_dict={'state': 'ERROR', 'train_neg_sample_args': None})\n"
        "assert 'sklearn' not in sys.modules, 'sklearn imported'\n"
        "import recbole.evaluator.metrics as m\n"
        "fpr, tpr = np.array([0, .5, 1.]), np.array([0, 1, 1.])\n"
        "t, p = np.array([1., 2, 3]), np.array([1.5, 2, 2])\n"
        "print(m.sk_auc(fpr, tpr), m.mean_absolute_error(t, p), m.mean_squared_error(t, p))\n"
        "from sklearn.metrics import auc\n"
        "assert auc is not m.sk_auc and auc(fpr, tpr) == m.sk_auc(fpr, tpr)\n"
        "get_model('BPR')\n"
        "try:\n    get_model('NoSuchModel')\nexcept ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert [float(x) for x in lines[0].split()] == pytest.approx([0.75, 0.5, 1.25 / 3])  # by hand
    assert lines[1] == "`model_name` [NoSuchModel] is not the name of an existing model."
