"""The log line after every validation: where the run stands and how long it can still take (epochs and time left
until early stopping at the latest, and until the epoch limit or the time budget)."""

from __future__ import annotations

from recbole_ext.trainer.stopping import TimeBudget


def progress_line(trainer, epoch: int, budget: TimeBudget) -> str:
    """'epoch 3/200: 8.9 s train + 0.5 s valid; ...' after (0-based) ``epoch`` of the running stage.

    ``trainer``: its ``train_seconds`` / ``valid_seconds`` (per epoch, all stages; earlier stages' epoch counts in
    ``stage_epochs``), ``epochs``, ``eval_step``, ``stopping_step``, ``cur_step`` (evaluations without improvement),
    ``best_valid_score`` and ``stage_label``."""
    stage_epochs = len(trainer.train_seconds) - sum(trainer.stage_epochs.values())
    pace = (sum(trainer.train_seconds[-stage_epochs:]) + sum(trainer.valid_seconds[-stage_epochs:])) / stage_epochs
    most = trainer.epochs - (epoch + 1)
    flat = min(most, (trainer.stopping_step + 1 - trainer.cur_step) * trainer.eval_step)
    cap = f" (time budget: {budget.left() / 60:.1f} min)" if budget else ""
    left = (f"at most {most} more epochs (~{most * pace / 60:.1f} min){cap}" if most else "the stage's last epoch")
    if 0 < flat < most:
        left = f"ends after {flat} more epochs without improvement (~{flat * pace / 60:.1f} min), {left}"
    return (f"{trainer.stage_label}epoch {epoch + 1}/{trainer.epochs}: {trainer.train_seconds[-1]:.1f} s train + "
            f"{trainer.valid_seconds[-1]:.1f} s valid; best valid {trainer.best_valid_score:.4f}; {left}")
