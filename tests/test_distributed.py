"""Ray Train: 2 CPU workers follow the 1-process loss trajectory with the same global batch; a dead worker fails."""

import os

import pytest
from ray import tune

from recbole_ext import run
from recbole_ext.distributed import run_distributed
from recbole_ext.trainer.ddp import Shard
from recbole_ext.tune import run_sweep


def test_shard_splits_every_global_batch_by_rank():
    batches = [list(range(0, 6)), list(range(6, 11)), [11]]  # the last one is smaller than the 2 workers
    shards = [list(Shard(batches, rank, 2)) for rank in (0, 1)]
    assert shards[0] == [[0, 2, 4], [6, 8, 10]] and shards[1] == [[1, 3, 5], [7, 9]]


def test_two_workers_follow_the_single_process_trajectory(tiny, tmp_path):
    """TiMiRec's two stages: the extractor handover (rank 0 loads, then broadcasts) is on the path."""
    config = {**tiny, "protocol": "rechorus", "epochs": 2, "stage": "both", "learning_rate": 0.01}  # 32 rows a worker
    single = run("TiMiRec", "tiny", config_dict=config)
    two = run_distributed("TiMiRec", "tiny", config_dict=config, workers=2, storage_path=tmp_path / "ray", name="two")
    assert two["train_losses"] == pytest.approx(single["train_losses"], rel=1e-5)  # the stated tolerance
    assert single["train_losses"][1] < single["train_losses"][0]  # it learned
    assert two["valid_scores"] == pytest.approx(single["valid_scores"], abs=1e-3)
    assert set(two["test_result"]) == set(single["test_result"]) and two["epochs"] == 4
    assert two["pretrain_test_result"] == pytest.approx(single["pretrain_test_result"], abs=1e-3)
    assert os.path.isfile(two["checkpoint"])  # the best model, through Ray's storage
    assert two["samples_per_s_per_worker"] > 0


def test_a_worker_that_dies_fails_the_run_in_one_line(tiny, tmp_path):
    def die(rank: int, epoch: int, score: float) -> None:
        if rank == 1:
            os._exit(3)

    with pytest.raises(RuntimeError, match="distributed training failed"):
        run_distributed("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "epochs": 3}, workers=2,
                        storage_path=tmp_path / "ray", name="dies", worker_callback=die)


def test_a_sweep_trial_can_itself_be_distributed(tiny, tmp_path):
    result = run_sweep("ComiRec", "tiny", {"learning_rate": tune.grid_search([0.01])},
                       config_dict={**tiny, "protocol": "rechorus", "epochs": 2}, search="grid", scheduler="fifo",
                       cpus_per_trial=2, workers_per_trial=2, storage_path=tmp_path / "ray", name="dist")
    row = result.table.iloc[0]
    assert row["status"] == "completed" and row["epochs"] == 2  # both epochs reported from the workers to Tune
    assert set(result.test_result) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}  # the checkpoint came back
