"""Using a trained model: top-k recommendations and embeddings, with the dataset's raw ids in and out.

    from recbole_ext import recommend
    recommend("saved/TiMiRec-....pth", ["196", "186"], k=10, exclude_history=True)   # a pandas DataFrame

    python run_recbole_ext.py recommend --checkpoint=PATH --users=196,186 --k=10 --exclude_history [--output=top.csv]
    python run_recbole_ext.py export --checkpoint=PATH --what=items|users|interests --format=npy|parquet|csv --output=F

``exclude_history`` leaves out every item of the user in the dataset's atomic ``.inter`` file(s), rows a protocol
dropped included (protocol ctr drops ratings of 3), and the padding item: a user with fewer than k items left gets
fewer rows (one :class:`FewerRows` warning counts such users). A user listed twice is answered once.

A checkpoint is rebuilt the way RecBole's ``load_data_and_model`` does (its saved config -> dataset -> model), for
every model the package runs, RecBole's own included:

* **sequential** models score the next item after the user's whole known history (every split, time order, the
  last ``MAX_ITEM_LIST_LENGTH`` items), through ``full_sort_predict``; the input row also carries the fields of the
  user's last interaction (MFN's macro view reads them);
* **general** models score by user id; **context-aware** models through ``full_sort_predict`` when they have one
  (MARIF), else by ``predict`` on every (user, item) row with the user's and items' features joined, in chunks;
* **multi-interest** models (those with ``interest_vectors``: ComiRec, TiMiRec, Re4) also say which interest produced
  each item: the interest whose vector scores the item highest (for TiMiRec after pretraining the score itself is a
  mixture of the interests; the column still names the interest that matches the item best);
* **item and user vectors** for export: a module named ``item_embedding`` / ``user_embedding``, or a RecBole
  context-aware model's rows of the item / user field in its shared table (FM, IFM, DeepFM, ...);
* **user vectors** of sequential models: a model's ``user_vectors`` when it has one (TiMiRec after pretraining: the mixture it
  scores with), else a sequential model's ``forward`` output when it is one vector per user (SASRec, GRU4Rec, ...),
  else a general model's ``user_embedding`` table.

Checkpoints are Python pickles (``torch.load(weights_only=False)``, as in RecBole): load only checkpoints from a
source you trust.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType, init_seed

from recbole_ext import registry
from recbole_ext.checkpoints import FINGERPRINT_KEY, check_unchanged, fingerprint, locate_data
from recbole_ext.files import replace_file
from recbole_ext.model.user_task import single_vector

FORMATS = ("npy", "parquet", "csv")
WHATS = ("items", "users", "interests")


class FewerRows(UserWarning):
    """``recommend(exclude_history=True)``: some users have fewer than k items they have not seen."""


def fewer_rows_message(short: int, users: int, k: int) -> str:
    return (f"recommend: {short} of {users} users have fewer than k={k} items left after excluding their history; "
            "they get fewer rows")


class TrainedModel:
    """A checkpoint's model with its dataset. ``device``: where to score (default CPU)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        from recbole_ext.quick_start import load_dataset

        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: {path} does not exist; pass the .pth file a training run saved "
                                    "(its path is printed at the end of the run)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise ValueError(f"checkpoint: {path} is not a readable torch checkpoint ({type(exc).__name__})") from None
        if not isinstance(state, dict) or not {"config", "state_dict"} <= set(state):
            raise ValueError(f"checkpoint: {path} is not a RecBole checkpoint (it has no config and state_dict)")
        config = self.config = state["config"]
        config["device"] = torch.device(device)
        locate_data(config, path)
        init_seed(config["seed"], config["reproducibility"])  # the training run's split (MARIF's pools come from it)
        self.dataset = load_dataset(config)
        check_unchanged(state.get(FINGERPRINT_KEY), fingerprint(config, self.dataset), path)  # before scoring
        # every interaction, before RecBole's build turns a sequential dataset's rows into (history, target) rows
        self.rows = self.dataset._dataframe_to_interaction(self.dataset.inter_feat)
        train = self.dataset.build()[0]  # the split the model was built on; no data loaders (no eval negatives to draw)
        model = registry.build_model(config, train)
        model.load_state_dict(state["state_dict"])
        model.load_other_parameter(state.get("other_parameter"))
        self.model = model.eval()
        self.uid, self.iid = self.dataset.uid_field, self.dataset.iid_field
        self._history = self._histories()
        self._seen_index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # --- ids ---------------------------------------------------------------------------------------------------
    def user_ids(self, tokens) -> np.ndarray:
        """Raw user tokens -> internal ids; an unknown token is a one-line error naming it."""
        known = self.dataset.field2token_id[self.uid]
        missing = [str(t) for t in tokens if str(t) not in known]
        if missing:
            raise ValueError(f"users: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                             f"{'is not a user' if len(missing) == 1 else 'are not users'} of {self.config['dataset']}")
        return np.array([known[str(t)] for t in tokens], dtype=np.int64)

    def _tokens(self, field: str, ids) -> np.ndarray:
        return self.dataset.field2id_token[field][np.asarray(ids)]

    # --- model input -------------------------------------------------------------------------------------------
    def _histories(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every interaction sorted by (user, time): (items, row of the original table, first, end per user id)."""
        inter = self.rows
        users, items = inter[self.uid].numpy(), inter[self.iid].numpy()
        time_field = self.dataset.time_field
        times = inter[time_field].numpy() if time_field in inter.interaction else np.zeros(len(users))
        order = np.lexsort((np.arange(len(users)), times, users))
        ids = np.arange(self.dataset.user_num)
        sorted_users = users[order]
        return items[order], order, np.searchsorted(sorted_users, ids, "left"), np.searchsorted(sorted_users, ids, "right")

    def seen(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in the batch, item id) of every interaction of the users: the dataset's rows and every row of its
        atomic ``.inter`` file(s), also those RecBole's filters or the protocol dropped (a user who rated an item 3
        has seen it, though protocol ctr drops the row as ambiguous)."""
        if self._seen_index is None:  # built on first use: reading the raw files costs a pass over them
            self._seen_index = self._seen_by_user()
        items, first, end = self._seen_index
        counts = end[users] - first[users]
        rows = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, items[np.repeat(first[users], counts) + offsets]

    def _seen_by_user(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items sorted by user, first, end per user id) over the dataset's rows and the raw atomic rows."""
        raw_users, raw_items = self._atomic_pairs()
        users = np.concatenate([self.rows[self.uid].numpy(), raw_users])
        items = np.concatenate([self.rows[self.iid].numpy(), raw_items])
        order = np.argsort(users, kind="stable")
        ids = np.arange(self.dataset.user_num)
        return items[order], np.searchsorted(users[order], ids, "left"), np.searchsorted(users[order], ids, "right")

    def _atomic_pairs(self, chunk: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
        """(user id, item id) of every row of the dataset's ``.inter`` file(s) (benchmark parts included), read as
        RecBole reads them; a token the dataset does not know (its rows were all filtered out) cannot be recommended
        and is skipped. No file (a dataset built in memory): nothing beyond the dataset's rows."""
        folder, name = Path(self.dataset.dataset_path), self.dataset.dataset_name
        parts = self.config["benchmark_filename"] or []
        paths = [folder / f"{name}.{part}.inter" for part in parts] if parts else [folder / f"{name}.inter"]
        sep, encoding = self.config["field_separator"], self.config["encoding"]
        maps = {self.uid: self.dataset.field2token_id[self.uid], self.iid: self.dataset.field2token_id[self.iid]}
        users, items = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for path in (p for p in paths if p.is_file()):
            header = {column.split(":")[0]: column for column in
                      pd.read_csv(path, sep=sep, nrows=0, encoding=encoding).columns}
            if self.uid not in header or self.iid not in header:
                continue
            for part in pd.read_csv(path, sep=sep, usecols=[header[self.uid], header[self.iid]], dtype=str,
                                    encoding=encoding, chunksize=chunk):  # C parser: ml-20m's rows in seconds
                u, i = part[header[self.uid]].map(maps[self.uid]), part[header[self.iid]].map(maps[self.iid])
                known = (u.notna() & i.notna()).to_numpy()
                users.append(u.to_numpy()[known].astype(np.int64))
                items.append(i.to_numpy()[known].astype(np.int64))
        return np.concatenate(users), np.concatenate(items)

    def _sequential_input(self, users: np.ndarray) -> Interaction:
        items, order, first, end = self._history
        length = self.config["MAX_ITEM_LIST_LENGTH"]
        counts = np.minimum(end[users] - first[users], length)
        if (counts == 0).any():
            raise ValueError(f"users: {self._tokens(self.uid, users[counts == 0])[0]!r} has no interactions to "
                             "recommend from")
        positions = (end[users] - counts)[:, None] + np.arange(length)[None]
        valid = np.arange(length)[None] < counts[:, None]
        seq = np.where(valid, items[np.minimum(positions, len(items) - 1)], 0)
        last = self.rows[torch.as_tensor(order[end[users] - 1])]  # the user's latest row
        last = self.dataset.join(last)
        last.update(Interaction({self.model.ITEM_SEQ: torch.as_tensor(seq),
                                 self.model.ITEM_SEQ_LEN: torch.as_tensor(counts)}))
        return last

    def _input(self, users: np.ndarray) -> Interaction:
        if self.model.type == ModelType.SEQUENTIAL:
            return self._sequential_input(users).to(self.model.device)
        return self.dataset.join(Interaction({self.uid: torch.as_tensor(users)})).to(self.model.device)

    # --- scores ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, users: np.ndarray, interaction: Interaction | None = None) -> torch.Tensor:
        """[B, n_items] scores of every item (column 0, the padding id, is -inf)."""
        interaction = self._input(users) if interaction is None else interaction
        try:
            scores = self.model.full_sort_predict(interaction).view(len(users), -1)
        except NotImplementedError:  # a context-aware model without full ranking: every (user, item) row
            scores = self._pairwise(users)
        scores = scores.float().clone()
        scores[:, 0] = -torch.inf
        return scores

    def _pairwise(self, users: np.ndarray, rows: int = 200_000) -> torch.Tensor:
        n_items = self.dataset.item_num
        chunk = max(1, rows // n_items)
        parts = []
        for start in range(0, len(users), chunk):
            batch = torch.as_tensor(users[start:start + chunk])
            pairs = Interaction({self.uid: batch.repeat_interleave(n_items),
                                 self.iid: torch.arange(n_items).repeat(len(batch))})
            parts.append(self.model.predict(self.dataset.join(pairs).to(self.model.device)).view(len(batch), -1))
        return torch.cat(parts)

    @torch.no_grad()
    def recommend(self, users, k: int = 10, exclude_history: bool = False, batch_size: int = 512,
                  warn: bool = True) -> pd.DataFrame:
        """Top-k items per user. -> DataFrame user, rank, item, score [, interest] (raw tokens).

        A user given twice is answered once, in the order of first appearance. ``exclude_history``: none of the
        user's items (:meth:`seen`) and never the padding item; a user with fewer than ``k`` items left gets fewer
        rows, and one warning (``warn``) says how many users did; the count is also ``table.attrs["fewer_than_k"]``."""
        if k < 1:
            raise ValueError(f"k: {k} must be at least 1")
        tokens = list(dict.fromkeys(str(t) for t in users))
        ids = self.user_ids(tokens)
        top_k = min(k, self.dataset.item_num - 1)
        frames, short = [], 0
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size]
            interaction = self._input(batch)
            frame, fewer = self._top(batch, interaction, top_k, exclude_history)
            frames.append(frame)
            short += fewer
        table = pd.concat(frames, ignore_index=True)
        table.attrs["fewer_than_k"] = short
        if short and warn:
            warnings.warn(fewer_rows_message(short, len(ids), k), FewerRows, stacklevel=3)  # past no_grad
        return table

    def _top(self, batch: np.ndarray, interaction: Interaction, k: int,
             exclude_history: bool) -> tuple[pd.DataFrame, int]:
        """One batch's top-k rows and how many of its users had fewer than k allowed items."""
        scores = self.scores(batch, interaction)
        allowed = torch.ones_like(scores, dtype=torch.bool)
        allowed[:, 0] = False  # the padding item is no item
        if exclude_history:
            rows, items = self.seen(batch)
            allowed[torch.as_tensor(rows), torch.as_tensor(items)] = False
        # every allowed item ranks above every excluded one, even an allowed -inf or NaN score: masking the excluded
        # with -inf alone let topk fill a short row with them (the user's own items, or [PAD])
        lowest = torch.finfo(scores.dtype).min
        ranked = torch.where(allowed, scores.nan_to_num(nan=lowest, neginf=lowest), -torch.inf).topk(k, dim=1)
        keep = (torch.arange(k, device=scores.device)[None] < allowed.sum(1, keepdim=True)).cpu().numpy()
        indices = ranked.indices.cpu().numpy()
        frame = {"user": np.repeat(self._tokens(self.uid, batch), k), "rank": np.tile(np.arange(1, k + 1), len(batch)),
                 "item": self._tokens(self.iid, indices.ravel()),
                 "score": scores.gather(1, ranked.indices).cpu().numpy().ravel()}
        if hasattr(self.model, "interest_vectors"):
            interests = self.model.interest_vectors(interaction)  # [B, K, d]
            vectors = self._item_table()[ranked.indices]  # [B, k, d]
            frame["interest"] = torch.einsum("bkd,bjd->bjk", interests, vectors).argmax(-1).cpu().numpy().ravel()
        return pd.DataFrame(frame)[keep.ravel()], int((~keep[:, -1]).sum())

    # --- embeddings --------------------------------------------------------------------------------------------
    def _item_table(self) -> torch.Tensor:
        """[n_items, d]: a module named ``item_embedding``, else a context-aware model's rows of the item field."""
        for name, module in self.model.named_modules():
            if name.split(".")[-1] == "item_embedding" and isinstance(module, torch.nn.Embedding):
                return module.weight
        return self._field_rows(self.iid)

    def _field_rows(self, field: str) -> torch.Tensor:
        """A RecBole context-aware model's embedding rows of one token field (its slice of the shared table)."""
        names = getattr(self.model, "token_field_names", None)
        if not names or field not in names:
            raise ValueError(f"export: {self.config['model']} has no embedding table for {field} (neither a module "
                             f"named {field.split('_')[0]}_embedding nor a token field of a RecBole context model)")
        start = int(self.model.token_field_offsets[names.index(field)])
        return self.model.token_embedding_table.embedding.weight[start:start + self.dataset.num(field)]

    @torch.no_grad()
    def embeddings(self, what: str, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """-> (raw ids, vectors): items [N, d]; users [U, d]; interests [U, K, d] (users with a history)."""
        name = self.config["model"]
        if what == "items":
            return self._tokens(self.iid, np.arange(1, self.dataset.item_num)), \
                self._item_table()[1:].cpu().numpy()
        if what not in WHATS:
            raise ValueError(f"what: {what!r} is not one of {WHATS}")
        if what == "users" and self.model.type != ModelType.SEQUENTIAL:
            table = getattr(self.model, "user_embedding", None)
            rows = table.weight if isinstance(table, torch.nn.Embedding) else self._field_rows(self.uid)
            return self._tokens(self.uid, np.arange(1, self.dataset.user_num)), rows[1:].cpu().numpy()
        if what == "interests" and not hasattr(self.model, "interest_vectors"):
            raise ValueError(f"export: {name} is not a multi-interest model; use --what=users or --what=items")
        if what == "users" and hasattr(self.model, "interest_vectors") and not hasattr(self.model, "user_vectors"):
            raise ValueError(f"export: {name} represents a user by several interests; use --what=interests")
        if self.model.type != ModelType.SEQUENTIAL:
            raise ValueError(f"export: interests need a sequential multi-interest model, not {name}")
        items, _, first, end = self._history
        users = np.flatnonzero(end > first)
        users = users[users > 0]
        parts = []
        for start in range(0, len(users), batch_size):
            interaction = self._input(users[start:start + batch_size])
            if what == "interests":
                parts.append(self.model.interest_vectors(interaction))
                continue
            out = single_vector(self.model, interaction)
            if out is None:
                raise ValueError(f"export: {name} in this state scores by its interests; use --what=interests")
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise ValueError(f"export: {name}.forward does not return one vector per user; users cannot be exported")
            parts.append(out)
        return self._tokens(self.uid, users), torch.cat(parts).cpu().numpy()


def recommend(checkpoint: str | Path, users, k: int = 10, exclude_history: bool = False) -> pd.DataFrame:
    """Top-k items for the users (raw tokens) from a checkpoint. -> DataFrame user, rank, item, score [, interest]."""
    return TrainedModel(checkpoint).recommend(users, k, exclude_history)


def write_embeddings(ids: np.ndarray, vectors: np.ndarray, fmt: str, output: str | Path) -> list[Path]:
    """``npy``: the array plus ``<output>.ids.txt`` (one raw id per line, in row order); ``parquet``/``csv``: one row
    per id (per id and interest for interests) with columns id[, interest], e0..e{d-1}. -> the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {FORMATS}")
    output = Path(output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output: folder {output.parent} does not exist")
    if fmt == "npy":
        sidecar = output.with_name(output.name + ".ids.txt")
        replace_file(lambda tmp: tmp.write_text("\n".join(map(str, ids)) + "\n"), sidecar)
        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a handle: np.save would append .npy to a name
                np.save(handle, vectors)

        replace_file(save, output)
        return [output, sidecar]
    flat = vectors.reshape(-1, vectors.shape[-1])
    frame = pd.DataFrame(flat, columns=[f"e{j}" for j in range(flat.shape[1])])
    if vectors.ndim == 3:
        frame.insert(0, "interest", np.tile(np.arange(vectors.shape[1]), len(ids)))
    frame.insert(0, "id", np.repeat(ids, flat.shape[0] // len(ids)))
    replace_file((lambda tmp: frame.to_parquet(tmp, index=False)) if fmt == "parquet"
             else (lambda tmp: frame.to_csv(tmp, index=False)), output)
    return [output]
