"""MFN's data: the synthetic two-view generator, its logistic-regression oracle, and the
user-level task's split (one row per user, users 8:1:1).

**Generator.** Users mix K latent topics (θ_u ~ Dirichlet(0.3)); each view draws categories from its own topic ->
category map (the "true alignment" of app and item categories runs through the topics) mixed half and half with a
view-private trait shift (macro: s_u, micro: r_u), and apps / items Zipf(1)-popular inside their category. The macro
view installs distinct apps (NegBin lengths, mean 25, gaps ~ 2 days); the micro view reads items (mean 60, gaps ~ 3
hours, from the same start) where 30 % of the steps follow one of the previous item's 3 fixed successors (the
sequential signal). Labels: ``gender`` from topics and both traits, ``age`` (5 buckets) from topics and the macro
trait, ``active`` from both views' lengths and the macro trait; so each view alone predicts them and both together
predict them better. Ids are prefixed strings (``a17``, ``ac3``, ``i230``, ``ic5``, ``u9``).

Atomic files: ``.inter`` (user, item, timestamp: the micro view), ``.item`` (item_cate), ``.user`` (the macro
view as time-ordered parallel ``macro_app_seq`` / ``macro_cate_seq`` / ``macro_time_seq`` fields, most recent
``MACRO_LEN`` kept, and the float labels), plus ``<name>.json`` with the generator's version, seed and sizes.
``--dataset=mfn-synthetic`` (calibration size) or ``mfn-synthetic-tiny`` generates them when absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data.user_task import split_by_token
from recbole_ext.files import replace_file

VERSION = 1
MACRO_LEN = 50
SIZES = {  # users, topics K, app categories Cg, item categories Cl, apps, items, mean macro / micro length
    "mfn-synthetic": dict(users=3000, topics=8, app_cates=12, item_cates=10, apps=300, items=1500, macro=25, micro=60),
    "mfn-synthetic-tiny": dict(users=200, topics=4, app_cates=6, item_cates=5, apps=50, items=300, macro=10, micro=20),
}
LABELS = ("gender", "age", "active")


def _negbin(rng: np.random.Generator, mean: float, r: float, low: int, high: int) -> int:
    return int(np.clip(rng.negative_binomial(r, r / (r + mean)), low, high))


def _catalogue(rng: np.random.Generator, n: int, n_cates: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Category of each id, and per category its ids with Zipf(1) probabilities over a shuffled popularity rank."""
    cates = rng.integers(0, n_cates, n)
    members, probs = [], []
    for c in range(n_cates):
        ids = rng.permutation(np.nonzero(cates == c)[0])
        weight = 1.0 / np.arange(1, len(ids) + 1)
        members.append(ids)
        probs.append(weight / weight.sum() if len(ids) else weight)
    return cates, members, probs


def _topics(rng: np.random.Generator, theta: np.ndarray, n: int) -> np.ndarray:
    """A topic chain: keep the previous topic with probability 0.6, else redraw from θ."""
    z = np.empty(n, dtype=np.int64)
    z[0] = rng.choice(len(theta), p=theta)
    for t in range(1, n):
        z[t] = z[t - 1] if rng.random() < 0.6 else rng.choice(len(theta), p=theta)
    return z


def _draw(rng, z, phi, psi, trait, members, probs) -> int:
    mix = 0.5 * phi[z] + 0.5 * psi if trait else phi[z]
    cate = rng.choice(len(mix), p=mix)
    while not len(members[cate]):  # an empty category (tiny catalogues): redraw
        cate = rng.choice(len(mix), p=mix)
    return int(rng.choice(members[cate], p=probs[cate]))


def generate(folder: Path, name: str, seed: int = 2021) -> Path:
    """Write ``folder/name/`` (atomic files + ``name.json``) for a size of :data:`SIZES`. -> the dataset folder"""
    size = SIZES[name]
    rng = np.random.default_rng(seed)
    K, Cg, Cl = size["topics"], size["app_cates"], size["item_cates"]
    phi_g, phi_l = rng.dirichlet(np.full(Cg, 0.2), K), rng.dirichlet(np.full(Cl, 0.2), K)
    psi_g, psi_l = rng.dirichlet(np.full(Cg, 0.3)), rng.dirichlet(np.full(Cl, 0.3))
    app_cate, app_members, app_probs = _catalogue(rng, size["apps"], Cg)
    item_cate, item_members, item_probs = _catalogue(rng, size["items"], Cl)
    successors = rng.integers(0, size["items"], (size["items"], 3))
    w = rng.normal(size=K)
    w -= w.mean()
    w_age, v_age = rng.normal(size=(5, K)), rng.normal(size=5)
    day = 86400.0
    inter, users = [], []
    for u in range(size["users"]):
        theta = rng.dirichlet(np.full(K, 0.3))
        s, r = rng.random() < 0.5, rng.random() < 0.5
        start = rng.uniform(0, 30 * day)
        n_g = _negbin(rng, size["macro"], 2.0, 5, 200)
        apps = []
        for z in _topics(rng, theta, n_g):
            app = _draw(rng, z, phi_g, psi_g, s, app_members, app_probs)
            if app not in apps:  # installs: an app once
                apps.append(app)
        app_times = start + np.cumsum(rng.exponential(2 * day, len(apps)))
        n_l = _negbin(rng, size["micro"], 1.5, 5, 500)
        items = []
        for z in _topics(rng, theta, n_l):
            follow = items and rng.random() < 0.3
            items.append(int(rng.choice(successors[items[-1]])) if follow
                         else _draw(rng, z, phi_l, psi_l, r, item_members, item_probs))
        item_times = start + np.cumsum(rng.exponential(3 * 3600.0, n_l))
        inter += [(f"u{u}", f"i{i}", round(t, 1)) for i, t in zip(items, item_times)]
        gender = rng.random() < 1 / (1 + np.exp(-(4 * theta @ w + (2 * r - 1) + (2 * s - 1))))
        age = int(np.argmax(2 * w_age @ theta + 1.5 * s * v_age + rng.gumbel(size=5)))
        logit = np.log(len(items)) - np.log(60) + 0.7 * (np.log(len(apps)) - np.log(25)) + (2 * s - 1)
        active = rng.random() < 1 / (1 + np.exp(-logit))
        recent = slice(max(len(apps) - MACRO_LEN, 0), None)  # RecBole's seq_len keeps the head: cut here
        users.append((f"u{u}", " ".join(f"a{a}" for a in apps[recent]),
                      " ".join(f"ac{app_cate[a]}" for a in apps[recent]),
                      " ".join(f"{t:.1f}" for t in app_times[recent]), float(gender), float(age), float(active)))
    files = {
        "inter": pd.DataFrame(inter, columns=["user_id:token", "item_id:token", "timestamp:float"]),
        "item": pd.DataFrame({"item_id:token": [f"i{i}" for i in range(size["items"])],
                              "item_cate:token": [f"ic{c}" for c in item_cate]}),
        "user": pd.DataFrame(users, columns=["user_id:token", "macro_app_seq:token_seq", "macro_cate_seq:token_seq",
                                             "macro_time_seq:float_seq", "gender:float", "age:float", "active:float"]),
    }
    out = Path(folder) / name
    out.mkdir(parents=True, exist_ok=True)
    for suffix, frame in files.items():  # each file whole or not at all
        replace_file(lambda tmp, frame=frame: frame.to_csv(tmp, sep="\t", index=False), out / f"{name}.{suffix}")
    (out / f"{name}.json").write_text(json.dumps({"generator": "recbole_ext.data.mfn", "version": VERSION,
                                                  "seed": seed, **size}, indent=1))
    return out


def ensure(folder: Path, name: str) -> None:
    """Generate a synthetic MFN dataset when its files are absent."""
    if name in SIZES and not (Path(folder) / name / f"{name}.inter").is_file():
        generate(folder, name)


def view_features(folder: Path, name: str,
                  seen: int | None = None) -> tuple[pd.Index, np.ndarray, np.ndarray, pd.DataFrame]:
    """Per user: macro and micro category histograms (normalised) plus log length, and the labels.

    ``seen``: only what a user-task row shows the model (:func:`user_task_build`): the micro items before the user's
    last one, whose time is the row's observation cutoff, the most recent ``seen`` of them (the model's
    ``MAX_ITEM_LIST_LENGTH``), and the macro events before that cutoff (the model masks the later ones). ``None``:
    each view whole, later apps included (the generator's own yardstick, which sees more than any model can)."""
    base = Path(folder) / name
    ids = {"user_id:token": str, "item_id:token": str}  # raw tokens, as RecBole reads them (the split sorts them)
    inter = pd.read_csv(base / f"{name}.inter", sep="\t", dtype=ids)
    items = pd.read_csv(base / f"{name}.item", sep="\t", dtype=ids).set_index("item_id:token")["item_cate:token"]
    users = pd.read_csv(base / f"{name}.user", sep="\t", dtype=ids).set_index("user_id:token")
    macro_cates = users["macro_cate_seq:token_seq"].fillna("").str.split()
    if seen is not None:
        inter = inter.sort_values(["user_id:token", "timestamp:float"], kind="stable")  # RecBole's TO order
        cutoff = inter.groupby("user_id:token")["timestamp:float"].max().reindex(users.index)
        from_end = inter.groupby("user_id:token").cumcount(ascending=False)  # the last item: 0
        inter = inter[(from_end >= 1) & (from_end <= seen)]
        times = users["macro_time_seq:float_seq"].fillna("").str.split()
        macro_cates = pd.Series([[c for c, t in zip(cates, stamps) if float(t) < limit] for cates, stamps, limit
                                 in zip(macro_cates, times, cutoff)], index=users.index)

    def histogram(cates: pd.Series) -> pd.DataFrame:
        counts = pd.crosstab(cates.index, cates.values)
        return pd.concat([counts.div(counts.sum(1), axis=0), np.log(counts.sum(1)).rename("log_len")], axis=1)

    micro = histogram(pd.Series(inter["item_id:token"].map(items).to_numpy(), index=inter["user_id:token"]))
    macro = histogram(macro_cates.explode().dropna())
    index = users.index
    return (index, macro.reindex(index).fillna(0).to_numpy(), micro.reindex(index).fillna(0).to_numpy(),
            users[[f"{label}:float" for label in LABELS]].set_axis(list(LABELS), axis=1))


def oracle(folder: Path, name: str, label: str = "gender", seed: int = 2020,
           seen: int | None = None) -> dict[str, float]:
    """Test AUC of a logistic regression on each view's category histogram + log length, and on both, users split
    8:1:1 with ``seed`` as the user task splits them (macro-averaged one-vs-rest AUC for ``age``). ``seen``: on what
    a user-task row shows the model only (see :func:`view_features`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    index, macro, micro, labels = view_features(folder, name, seen)
    train, _, test = split_by_token(index.to_numpy(), seed, [0.8, 0.1, 0.1])
    y = labels[label].to_numpy().astype(int)
    out = {}
    for view, x in (("macro", macro), ("micro", micro), ("both", np.hstack([macro, micro]))):
        fit = LogisticRegression(max_iter=2000).fit(x[train], y[train])
        proba = fit.predict_proba(x[test])
        out[view] = float(roc_auc_score(y[test], proba[:, 1]) if proba.shape[1] == 2 else
                          roc_auc_score(y[test], proba, multi_class="ovr", average="macro"))
    return out
