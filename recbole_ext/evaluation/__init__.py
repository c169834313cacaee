"""Evaluation pieces RecBole lacks; they feed RecBole's own Collector and metric classes."""

from recbole_ext.evaluation.ranking import pessimistic_rank, rank_scores

__all__ = ["pessimistic_rank", "rank_scores"]
