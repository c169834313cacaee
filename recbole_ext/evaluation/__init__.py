"""Evaluation pieces RecBole lacks; they feed RecBole's own Collector and metric classes."""

from recbole_ext.evaluation.classification import F1, Accuracy, ClassAUC, ClassPrecision, ClassRecall
from recbole_ext.evaluation.comirec import ComiRecNDCG
from recbole_ext.evaluation.ranking import pessimistic_rank, rank_scores
from recbole_ext.evaluation.regression import ClippedRMSE

METRICS = (ComiRecNDCG, ClippedRMSE, ClassAUC, Accuracy, ClassPrecision, ClassRecall, F1)

__all__ = ["Accuracy", "ClassAUC", "ClassPrecision", "ClassRecall", "ClippedRMSE", "F1", "ComiRecNDCG", "pessimistic_rank", "rank_scores", "register_metrics"]


def register_metrics() -> None:
    """Make the plugin's metrics RecBole metrics: the tables ``recbole.evaluator.register`` builds at import from
    ``recbole.evaluator.metrics`` (Config validates ``metrics`` against them and sets ``valid_metric_bigger`` from
    ``smaller_metrics``; the Evaluator instantiates from them), updated in place."""
    import recbole.evaluator.metrics as metrics
    import recbole.evaluator.register as register

    for cls in METRICS:
        name = cls.__name__.lower()
        setattr(metrics, cls.__name__, cls)
        register.metrics_dict[name] = cls
        register.metric_information[name] = cls.metric_need
        register.metric_types[name] = cls.metric_type
        if cls.smaller and name not in register.smaller_metrics:
            register.smaller_metrics.append(name)
