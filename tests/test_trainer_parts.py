"""The plugin trainer's collaborators, each alone: stop rules, resume state, run files, optimizer, progress line,
protocol scoring and the data-parallel helpers."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from torch import nn

from recbole_ext.checkpoints import FINGERPRINT_KEY
from recbole_ext.data.comirec import TARGETS
from recbole_ext.data.protocol import CANDIDATES
from recbole_ext.evaluation.comirec import KEY as COMIREC_KEY
from recbole_ext.evaluation.comirec import comirec_ndcg
from recbole_ext.evaluation.ranking import rank_scores
from recbole_ext.trainer import ddp, resume
from recbole_ext.trainer.evaluate import candidate_ranks, collect_comirec_ndcg, forget_comirec
from recbole_ext.trainer.optimizer import fused, without_bias_decay
from recbole_ext.trainer.progress import progress_line
from recbole_ext.trainer.run_files import RunFiles
from recbole_ext.trainer.stopping import RecBoleRule, ReChorusRule, TimeBudget, stopping_rule


# --- stopping ----------------------------------------------------------------------------------------------------
def _first_stop(rule, scores: list[float]) -> int | None:
    """1-based number of the evaluation after which ``rule`` stops, None if it never does."""
    return next((n for n, score in enumerate(scores, 1) if rule.update(score)), None)


@pytest.mark.parametrize("scores, stop", [
    ([0.5] * 30, 21),  # flat: the last 10 never increased once more than 20 evaluations ran
    ([i / 100 for i in range(15)] + [0.2] * 15, 25),  # rising for 15, then stopped by the 10th flat score
    ([i / 100 for i in range(25)] + [0.3 - i / 100 for i in range(10)], 35),  # rising for 25, then 10 falling
    ([0.5, 0.4] * 20, None),  # an increase in every window of 10
])
def test_rechorus_rule_stops_when_the_last_10_scores_never_increased(scores, stop):
    assert _first_stop(ReChorusRule(), scores) == stop


def test_rechorus_rule_continues_a_resumed_curve_and_recbole_rule_never_stops():
    scores = [0.5] * 30
    assert _first_stop(ReChorusRule(scores[:15]), scores[15:]) == 21 - 15  # counts the scores seen before a resume
    assert _first_stop(RecBoleRule(), scores) is None
    assert isinstance(stopping_rule({"stopping_rule": "rechorus"}), ReChorusRule)
    assert isinstance(stopping_rule({"stopping_rule": "recbole"}), RecBoleRule)


def test_time_budget():
    assert not TimeBudget(0) and not TimeBudget(0).spent() and not TimeBudget(None).spent()
    budget = TimeBudget(5.0, started=0.0)  # perf_counter started long before
    assert budget and budget.spent() and budget.left() == 0 and budget.message == "time_budget of 5.0s reached"
    fresh = TimeBudget(3600.0)
    assert not fresh.spent() and 3590 < fresh.left() <= 3600


# --- resume ------------------------------------------------------------------------------------------------------
class _Model(nn.Module):
    """A model with RecBole's ``other_parameter`` protocol and a generator of its own (as MARIF's history)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.draws = torch.Generator().manual_seed(1)
        self.mode = "pretrain"

    def other_parameter(self) -> dict:
        return {"mode": self.mode}

    def load_other_parameter(self, para: dict) -> None:
        self.mode = para["mode"]


def _trainer() -> SimpleNamespace:
    model = _Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.linear(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return SimpleNamespace(config={"model": "M", "dataset": "d"}, cur_step=2, best_valid_score=0.3,
                           best_valid_result={"ndcg": 0.3}, model=model, optimizer=optimizer, fingerprint=None,
                           start_epoch=0, valid_scores=[0.1, 0.3], train_seconds=[1.0, 1.0], valid_seconds=[0.1, 0.1],
                           stage_epochs={}, train_losses=[2.0, 1.5])


def _draws(trainer, loader) -> list:
    return [torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random(),
            torch.rand(2, generator=trainer.model.draws).tolist(), torch.rand(2, generator=loader.generator).tolist()]


def test_resume_state_round_trips_the_next_random_draws_and_the_training_state():
    trainer, loader = _trainer(), SimpleNamespace(generator=torch.Generator().manual_seed(2))
    state = resume.capture(trainer, epoch=4, finished=False, train_data=loader)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    expected = _draws(trainer, loader)

    later = _trainer()  # another process: fresh objects, other random states, changed weights
    later.model.linear.weight.data.zero_()
    later.model.mode, later.valid_scores, later.cur_step = "finetune", [], 0
    other_loader = SimpleNamespace(generator=torch.Generator().manual_seed(9))
    torch.manual_seed(123)
    resume.restore(later, state, other_loader)
    assert _draws(later, other_loader) == expected  # the next random draws, everywhere, are the interrupted run's
    assert all(torch.equal(later.model.state_dict()[k], v) for k, v in weights.items())
    assert later.model.mode == "pretrain" and later.start_epoch == 5 and later.cur_step == 2
    assert later.valid_scores == [0.1, 0.3] and later.best_valid_result == {"ndcg": 0.3}
    assert later.optimizer.state_dict()["state"][0]["step"] == 1  # Adam's moments came back too


def test_generators_are_found_by_a_stable_name():
    loader = SimpleNamespace(generator=torch.Generator(), per_key={"a": torch.Generator(), "b": 1})
    assert set(resume.generators(train_data=loader, model=_Model())) == {
        "train_data.generator", "train_data.per_key[a]", "model.draws"}


def test_a_resume_file_of_another_run_is_refused():
    trainer = _trainer()
    state = resume.capture(trainer, epoch=0, finished=False, train_data=SimpleNamespace())
    other = SimpleNamespace(config={"model": "M", "dataset": "other"}, fingerprint=None)
    with pytest.raises(ValueError, match="is a dataset 'd' run, not 'other'"):
        resume.check_same_run(state, other, "x-resume.pth")
    assert state[FINGERPRINT_KEY] is None and state["curves"]["train_losses"] == [2.0, 1.5]


# --- run files ---------------------------------------------------------------------------------------------------
def test_run_files_never_replace_another_runs_file(tmp_path):
    files = RunFiles(str(tmp_path / "M-time-abc123.pth"))
    theirs = tmp_path / "M-time-abc123-resume.pth"
    theirs.write_bytes(b"another run's")
    with pytest.raises(FileExistsError):
        files.save({"x": 1}, str(theirs))
    assert theirs.read_bytes() == b"another run's"
    ours = str(tmp_path / "M-time-abc123.pth")
    files.save({"x": 1}, ours)
    files.save({"x": 2}, ours)  # its own file: replaced
    assert torch.load(ours, weights_only=False) == {"x": 2}
    (tmp_path / "best.pth").write_bytes(b"old")
    files.save({"x": 3}, str(tmp_path / "best.pth"))  # a fixed name outside the run's (a sweep's best.pth)
    assert torch.load(tmp_path / "best.pth", weights_only=False) == {"x": 3}


# --- optimizer ---------------------------------------------------------------------------------------------------
def test_no_bias_decay_groups_and_the_fused_optimizer():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)
    groups = without_bias_decay(model)
    assert [len(g["params"]) for g in groups] == [1, 2] and groups[1]["weight_decay"] == 0.0
    adam = torch.optim.Adam(groups, lr=0.01, weight_decay=0.1)
    faster = fused(adam)
    assert type(faster) is torch.optim.Adam and faster.defaults["fused"] is True
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in faster.param_groups] == [
        (0.01, 0.1, 1), (0.01, 0.0, 2)]
    rmsprop = torch.optim.RMSprop(model.parameters())  # torch has no fused RMSprop: kept as it is
    assert fused(rmsprop) is rmsprop


# --- progress line -----------------------------------------------------------------------------------------------
def test_progress_line_counts_the_running_stage_only():
    trainer = SimpleNamespace(train_seconds=[9.0, 9.0, 50.0, 70.0], valid_seconds=[1.0, 1.0, 10.0, 10.0],
                              stage_epochs={"pretrain": 2}, epochs=10, stopping_step=3, cur_step=1, eval_step=1,
                              best_valid_score=0.25, stage_label="stage 2/2 ")
    # the stage's pace: (50 + 70 + 10 + 10) / 2 = 70 s an epoch; early stopping after 3 more flat epochs at most
    assert progress_line(trainer, 1, TimeBudget(0)) == (
        "stage 2/2 epoch 2/10: 70.0 s train + 10.0 s valid; best valid 0.2500; ends after 3 more epochs without "
        "improvement (~3.5 min), at most 8 more epochs (~9.3 min)")
    assert progress_line(trainer, 9, TimeBudget(0)).endswith("the stage's last epoch")
    assert "(time budget: 0.0 min)" in progress_line(trainer, 1, TimeBudget(5.0, started=0.0))


# --- protocol scoring --------------------------------------------------------------------------------------------
def test_fixed_negatives_ranks_with_and_without_predict_candidates():
    candidates = torch.tensor([[3, 1, 2], [0, 2, 3]])  # [B, 1+N], column 0 = target
    full = torch.tensor([[0.1, 0.5, 0.2, 0.4], [0.9, 0.1, 0.9, 0.3]])  # [B, n_items]
    batch = Interaction({CANDIDATES: candidates})
    expected = rank_scores(full.gather(1, candidates))  # target ranks: 2nd of 3 (0.4 < 0.5), tied 1st-2nd
    assert torch.equal(candidate_ranks(nn.Module(), batch, torch.device("cpu"), lambda: full), expected)

    class Scorer(nn.Module):
        def predict_candidates(self, interaction, cands):
            return full.gather(1, cands)

    def never():
        raise AssertionError("a model with predict_candidates needs no full-sort pass")

    assert torch.equal(candidate_ranks(Scorer(), batch, torch.device("cpu"), never), expected)


class _Collector:
    """RecBole's Collector as the plugin uses it: a register of needed keys and a data struct."""

    def __init__(self, needed: bool):
        self.register = SimpleNamespace(need=lambda key: needed and key == COMIREC_KEY)
        self.collected: dict = {}
        self.data_struct = SimpleNamespace(update_tensor=self.collected.__setitem__)


def test_comirec_ndcg_is_collected_only_when_a_metric_needs_it():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.1, 0.2, 0.7]])  # [B, n_items]
    batch = Interaction({TARGETS: torch.tensor([[2, 0], [3, 1]])})
    for needed in (True, False):
        collector = _Collector(needed)
        collect_comirec_ndcg(collector, scores, batch, [1, 2])
        if needed:
            top = scores.topk(2, dim=1).indices
            assert torch.equal(collector.collected[COMIREC_KEY], comirec_ndcg(top, batch[TARGETS], [1, 2]))
        else:
            assert not collector.collected
    struct = {COMIREC_KEY: 1, "rec.topk": 2}
    forget_comirec(SimpleNamespace(data_struct=struct))
    assert struct == {"rec.topk": 2}


# --- data-parallel helpers ---------------------------------------------------------------------------------------
def test_scale_per_worker_batch_and_learning_rate():
    config = {"distributed_workers": 4, "distributed_batch": "per_worker", "train_batch_size": 64,
              "learning_rate": 0.01, "lr_scaling": "sqrt"}
    ddp.scale(config)
    assert config["train_batch_size"] == 256 and config["learning_rate"] == pytest.approx(0.02)
    config = {**config, "distributed_batch": "global", "train_batch_size": 64, "lr_scaling": "none"}
    ddp.scale(config)
    assert config["train_batch_size"] == 64 and config["learning_rate"] == pytest.approx(0.02)


def test_outside_a_process_group_a_process_trains_alone():
    assert ddp.world() == (0, 1)
    assert ddp.wrap(nn.Linear(2, 1), {"distributed_workers": 2, "device": "cpu"}) is None
    assert ddp.wrap(nn.Linear(2, 1), {"distributed_workers": 0, "device": "cpu"}) is None


def test_rank0_decisions_in_a_one_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                                         world_size=1)
    try:
        assert ddp.world() == (0, 1)
        assert ddp.agreed(True) is True and ddp.agreed(False) is False
        assert ddp.from_rank0(lambda: (0.5, {"ndcg": 0.5}), rank=0) == (0.5, {"ndcg": 0.5})
        assert ddp.mean_loss((2.0, 4.0), 1) == (2.0, 4.0) and ddp.mean_loss(3.0, 1) == 3.0
        model = nn.Linear(2, 1)
        wrapped = ddp.wrap(model, {"distributed_workers": 1, "device": "cpu"})
        assert isinstance(wrapped.module, ddp.LossOf) and wrapped.module.model is model
    finally:
        torch.distributed.destroy_process_group()
