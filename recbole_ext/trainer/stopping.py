"""The plugin's stop rules, each asked after every validation; RecBole's own ``stopping_step`` stays in its ``fit``.

* ``stopping_rule: recbole`` (:class:`RecBoleRule`): nothing beyond RecBole's ``stopping_step``;
* ``stopping_rule: rechorus`` (:class:`ReChorusRule`): also stop once more than 20 evaluations have run and the last
  10 valid scores never increased (ReChorus BaseRunner rule a);
* ``time_budget: SECONDS`` (:class:`TimeBudget`): stop at the first validation after that much time in one ``fit``.
"""

from __future__ import annotations

from time import perf_counter
from typing import Iterable


class Stop(Exception):
    """Ends ``Trainer.fit`` early; ``reason`` is the run's ``stop_reason`` (``stopping_rule`` or ``time_budget``)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class RecBoleRule:
    """``stopping_rule: recbole``: RecBole's ``stopping_step`` alone, which its ``fit`` applies itself."""

    message = ""

    def update(self, score: float) -> bool:
        """Never stops on its own."""
        return False


class ReChorusRule:
    """``stopping_rule: rechorus``: stop once more than ``min_evaluations`` valid scores were seen and the last
    ``window`` of them never increased (each ≥ the next)."""

    message = "the last 10 valid scores never increased (ReChorus rule)"

    def __init__(self, scores: Iterable[float] = (), window: int = 10, min_evaluations: int = 20):
        self.scores = list(scores)  # a resumed stage starts from the scores it had
        self.window, self.min_evaluations = window, min_evaluations

    def update(self, score: float) -> bool:
        """Record the latest valid score. -> whether to stop now."""
        self.scores.append(score)
        last = self.scores[-self.window:]
        return len(self.scores) > self.min_evaluations and all(a >= b for a, b in zip(last, last[1:]))


def stopping_rule(config, scores: Iterable[float] = ()) -> RecBoleRule | ReChorusRule:
    """The rule ``config['stopping_rule']`` names, having seen ``scores`` (a resumed stage's valid curve)."""
    return ReChorusRule(scores) if config["stopping_rule"] == "rechorus" else RecBoleRule()


class TimeBudget:
    """``time_budget`` seconds from ``started`` (``perf_counter`` time; 0 or None: no budget)."""

    def __init__(self, seconds: float | None, started: float | None = None):
        self.seconds = seconds
        self.started = perf_counter() if started is None else started

    def __bool__(self) -> bool:
        return bool(self.seconds)

    def spent(self) -> bool:
        """Whether the budget is used up (never, without one)."""
        return bool(self.seconds) and perf_counter() - self.started > self.seconds

    def left(self) -> float:
        """Seconds left, at least 0 (a run with a budget)."""
        return max(self.seconds - (perf_counter() - self.started), 0)

    @property
    def message(self) -> str:
        return f"time_budget of {self.seconds}s reached"
