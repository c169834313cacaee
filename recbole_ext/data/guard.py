"""Data loaders only the plugin's trainer may iterate.

Some data would be consumed wrongly, and silently, by RecBole's plain ``Trainer`` (``run_recbole`` with one of
RecBole's own models): ±1 labels it would fit with BCE, fixed-negative rows it would rank against all items, user
rows it would train a next-item objective on. Such a loader carries :class:`NeedsPluginTrainer`; the plugin trainer
mixin sets ``trainer_ready`` before it iterates one, and anything else gets the loader's one-line refusal.
"""

from __future__ import annotations

from functools import lru_cache


class NeedsPluginTrainer:
    """Mixin for a RecBole data loader: iteration raises ``refusal`` until ``trainer_ready`` is set."""

    trainer_ready = False
    refusal = "this data needs a recbole_ext trainer; run it with recbole_ext.run() or run_recbole_ext.py"

    def __iter__(self):
        if not self.trainer_ready:
            raise RuntimeError(self.refusal.format(model=self.config["model"]))
        return super().__iter__()


@lru_cache(maxsize=None)
def guarded(base: type, refusal: str) -> type:
    """``base`` (a RecBole loader class) with :class:`NeedsPluginTrainer` and this ``refusal`` (``{model}``: the
    model's name); one class per pair, so loaders of one kind share it."""
    return type(f"Guarded{base.__name__}", (NeedsPluginTrainer, base), {"refusal": refusal, "__module__": __name__})
