"""Two gloo processes under torchrun train exactly as one process does on the same global batch."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

WORKER = textwrap.dedent('''
    """Train a BatchNorm-free student (per-process batch statistics would differ) on synthetic data."""
    import json
    import sys

    import torch
    import torch.nn as nn

    from autokd.data import IMAGENET_MEAN, IMAGENET_STD, synthetic_dataset
    from autokd.recipes import Recipe
    from autokd.teachers import Teacher
    from autokd.train import train_student


    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


    def main(out):
        torch.set_num_threads(1)
        data = synthetic_dataset(num_classes=4, train_size=64, test_size=16, img_size=32)
        teacher = Teacher(model=net(1).eval(), name="net", pretrained=True, img_size=32,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, interpolation="bilinear",
                          family="other", num_classes=4)
        recipe = Recipe.load("kd").replace(epochs=2, batch_size=16, lr=0.1, augmentation="none",
                                           grad_clip=5.0)
        result = train_student(net(0), teacher, data, recipe, out, device="cpu", progress=False, log_every=1)
        return result


    if __name__ == "__main__":
        import os
        from pathlib import Path

        result = main(sys.argv[1])
        # one file per rank: two processes printing to one pipe can interleave their lines
        rank = os.environ.get("RANK", "0")
        record = {"world_size": result.world_size, "top1": result.top1}
        (Path(sys.argv[1]).parent / f"rank{rank}.json").write_text(json.dumps(record))
''')


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "ddp_worker.py"
    path.write_text(WORKER)
    return path


def test_two_gloo_processes_match_one_process(worker, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(worker), str(tmp_path / "ddp")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["top1"] == ranks[1]["top1"]  # evaluation is summed over both shards

    spec = importlib.util.spec_from_file_location("ddp_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    single = module.main(tmp_path / "single")
    assert single.world_size == 1

    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["world_size"] == 2 and ddp["eval_images"] == 16
    single_losses = [h["train_loss"] for h in single.history]
    assert [h["train_loss"] for h in ddp["history"]] == pytest.approx(single_losses, rel=1e-5)
    assert ddp["top1"] == single.top1
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * ((64 - 8) // 16)  # a tenth held out (2 per class)
    assert len(a["rng"]) == 2 and len(b["rng"]) == 1  # each process's RNG state is kept for the resume
    for key, value in b["model"].items():
        assert torch.allclose(a["model"][key], value, atol=1e-5), key
    # the weights moved: the comparison is not between two untouched initialisations
    assert not torch.allclose(b["model"]["6.weight"], module.net(0)[6].weight, atol=1e-3)
    # rank 0 alone writes the run folder
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "last.pt", "results.json"]
