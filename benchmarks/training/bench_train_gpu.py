"""All the training-throughput figures of a GPU in one command and one JSON.

ViT-B -> DeiT-Ti and ResNet-50 -> ResNet-18 at 224 px, bf16 autocast, channels_last: the KD step with and
without torch.compile and the teacher cache, with MFU (bench_train_throughput.py), then `autokd train` end to
end against timm's loop, the cache from the second student on and K students together (bench_train_e2e.py).

    python benchmarks/training/bench_train_gpu.py                      # on the GPU: benchmarks/results/train_gpu.json
    python benchmarks/training/bench_train_gpu.py --small --device cpu # the same command on tiny models (the check)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import RESULTS_DIR, machine, write_json  # noqa: E402
from benchmarks.training import (
    bench_train_e2e,  # noqa: E402
    bench_train_throughput,  # noqa: E402
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny models on few images (a CPU check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/train_gpu.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        step_json, e2e_json = Path(tmp) / "step.json", Path(tmp) / "e2e.json"
        step = ["--compile", "--device", args.device, "--json", str(step_json)]
        e2e = ["--device", args.device, "--json", str(e2e_json)]
        if args.small:
            step += ["--small", "--steps", "4", "--warmup", "1"]
            e2e += ["--small", "--images", "96", "--batch-size", "16", "--k", "2"]
        else:
            e2e += ["--gpu"]
        bench_train_throughput.main(step)
        bench_train_e2e.main(e2e)
        result = {"machine": machine(), "step": json.loads(step_json.read_text()),
                  "end_to_end": json.loads(e2e_json.read_text())}
    default = RESULTS_DIR / ("train_gpu_small.json" if args.small else "train_gpu.json")
    print(f"wrote {write_json(result, args.json or default)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
