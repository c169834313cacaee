"""Ray Train: 2 CPU workers follow the 1-process loss trajectory with the same global batch; a dead worker fails."""

import os
import signal

import pytest

from recbole_ext import run
from recbole_ext.distributed import Shard, run_distributed


@pytest.fixture
def guard():
    """Fail instead of hanging: a distributed test gets 5 minutes."""
    def timeout(*_):
        raise TimeoutError("distributed test hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_shard_splits_every_global_batch_by_rank():
    batches = [list(range(0, 6)), list(range(6, 11)), [11]]  # the last one is smaller than the 2 workers
    shards = [list(Shard(batches, rank, 2)) for rank in (0, 1)]
    assert shards[0] == [[0, 2, 4], [6, 8, 10]] and shards[1] == [[1, 3, 5], [7, 9]]


def test_two_workers_follow_the_single_process_trajectory(tiny, tmp_path, guard):
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


def test_a_worker_that_dies_fails_the_run_in_one_line(tiny, tmp_path, guard):
    def die(rank: int, epoch: int, score: float) -> None:
        if rank == 1:
            os._exit(3)

    with pytest.raises(RuntimeError, match="distributed training failed"):
        run_distributed("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "epochs": 3}, workers=2,
                        storage_path=tmp_path / "ray", name="dies", worker_callback=die)
