"""Supernet training at scale, checked on the CPU: two gloo processes, the epoch callback, the CUDA settings and the
GPU benchmark's --small mode."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import autokd.supernet.train as train_module
from autokd.recipes import Recipe
from autokd.spaces import ArchSpec, load_space
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.supernet import SupernetRun, split_bands, supernet_for, train_supernet
from autokd.supernet.bands import BandSpace
from autokd.supernet.train import EveryNth, load_supernet_state, precision_for, shard_batches
from autokd.train.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]
SPECS = [ArchSpec.make("cifar_resnet", depths=d, widths=w, shortcut=s) for d, w, s in
         (((2, 2, 2), (16, 16, 32), "B"), ((1, 1, 1), (8, 8, 8), "A"), ((1, 2, 1), (8, 16, 16), "A"))]
RECIPE = Recipe(optimizer="sgd", lr=0.05, weight_decay=0.0, epochs=1, batch_size=8)


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def batches(kind: str) -> DataLoader:
    """'twice': batches A, A, B, B (two ranks see the same batch at each step); 'once': A, B; 'distinct': four."""
    x, y = images(32 if kind == "distinct" else 16, 0)
    if kind == "twice":
        x, y = (torch.cat([t[:8], t[:8], t[8:], t[8:]]) for t in (x, y))
    return DataLoader(TensorDataset(x, y), batch_size=8)


def setup(epochs: int = 1):
    """A tiny CNN supernet, its band run and a teacher, the same in every process."""
    space = load_space("cifar_resnet", 32)
    band = BandSpace(space, split_bands(1_829_456, 12_000_000, 1)[0], 10)
    torch.manual_seed(0)
    net = supernet_for(space, SPECS, 10)
    torch.manual_seed(1)
    teacher = CifarResNet((1, 1, 1), (16, 16, 16), num_classes=10).eval()
    return net, teacher, SupernetRun(band, SPECS[0], SPECS[1], RECIPE.replace(epochs=epochs), random_subnets=1)


def _rank(rank: int, port: int, folder: str, kind: str) -> None:
    """One of two processes, with the environment torchrun gives it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    saves, calls = [], []
    original = train_module.save_supernet

    def save(*args):  # (path, supernet, run, optimizer, scheduler, rng, epoch, history)
        saves.append(args[-2])
        original(*args)

    train_module.save_supernet = save
    net, teacher, run = setup()
    history = train_supernet(net, teacher, batches(kind), run, Path(folder) / "out", on_epoch=calls.append)
    torch.save(net.state_dict(), Path(folder) / f"rank{rank}.pt")
    record = {"saves": saves, "calls": len(calls), "history": history}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(record))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(folder: Path, kind: str) -> tuple[list[dict], list[dict]]:
    folder.mkdir()
    mp.spawn(_rank, args=(free_port(), str(folder), kind), nprocs=2)
    states = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return states, [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_on_duplicated_batches_equal_one_process_on_the_batches_once(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    states, records = two_ranks(tmp_path / "ddp", "twice")
    net, teacher, run = setup()
    history = train_supernet(net, teacher, batches("once"), run, tmp_path / "single")
    for key, value in net.state_dict().items():  # the mean of two equal gradients is that gradient
        assert torch.allclose(states[0][key], value, atol=1e-6), key
        assert torch.equal(states[0][key], states[1][key]), key
    assert records[0]["history"][0]["loss_largest"] == pytest.approx(history[0]["loss_largest"], rel=1e-6)


def test_two_ranks_on_distinct_batches_keep_one_model_and_rank_0_writes(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    states, records = two_ranks(tmp_path / "ddp", "distinct")
    net, _, _ = setup()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key  # gradients averaged: the ranks never drift apart
    assert not torch.equal(states[0]["store.linear.weight"], net.state_dict()["store.linear.weight"])
    assert [r["saves"] for r in records] == [[1], []]  # rank 0 alone saves
    assert [r["calls"] for r in records] == [1, 0]
    losses = [{k: v for k, v in r["history"][0].items() if k.startswith("loss")} for r in records]
    assert losses[0] == losses[1]  # the epoch's losses are the mean over both ranks
    assert sorted(p.name for p in (tmp_path / "ddp" / "out").iterdir()) == ["progress.json", "supernet.pt"]
    saved = load_supernet_state(tmp_path / "ddp" / "out" / "supernet.pt")["model"]
    assert all(torch.equal(saved[k], v) for k, v in states[0].items())


def test_on_epoch_gets_each_epoch_entry_once(tmp_path):
    net, teacher, run = setup(epochs=2)
    calls = []
    history = train_supernet(net, teacher, batches("once"), run, tmp_path, on_epoch=calls.append)
    assert calls == history and [c["epoch"] for c in calls] == [1, 2]
    assert {"loss_largest", "loss_smallest", "loss_random", "seconds", "lr"} <= set(calls[0])


def test_precision_is_bf16_and_channels_last_for_cnns_on_cuda_only():
    assert precision_for(torch.device("cpu"), "cifar_resnet") == (None, False)
    assert precision_for("cpu", "vit") == (None, False)
    assert precision_for(torch.device("cuda"), "cifar_resnet") == (torch.bfloat16, True)
    assert precision_for(torch.device("cuda", 1), "vit") == (torch.bfloat16, False)


def test_each_rank_gets_every_other_batch_and_the_same_count():
    assert [list(EveryNth(range(5), r, 2)) for r in (0, 1)] == [[0, 2], [1, 3]]
    assert len(EveryNth(range(5), 1, 2)) == 2
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=2)
    one = shard_batches(loader, DistInfo(0, 1, 0, torch.device("cpu")))
    assert one is loader
    shards = [shard_batches(loader, DistInfo(r, 2, r, torch.device("cpu"))) for r in (0, 1)]
    assert [len(s) for s in shards] == [2, 2]
    assert [[b[0].tolist() for b in s] for s in shards] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]


@pytest.mark.slow
def test_gpu_benchmark_small_mode_writes_a_winner_inside_each_band(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, str(ROOT / "benchmarks" / "training" / "gpu_supernet_vit.py"), "--small",
               "--threads", "1", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [b["band"] for b in result["bands"]] == [0, 1, 2]
    for band in result["bands"]:
        assert band["scored"] >= 1 and band["heldout_top1"] is not None
        assert band["low"] <= band["macs"] <= band["high"] and (band["macs"] > band["low"] or band["band"] == 0)
    assert set(result["seconds"]) == {"teacher", "supernets_and_search"} and result["device"]
    assert out.with_suffix(".csv").is_file()
