"""One search worker process for the multi-process tests: `python tests/search_worker.py CONFIG_JSON SYNC_DIR MODE`.

Every worker, ready to score its first candidate, signals SYNC_DIR/ready-<pid> and waits for SYNC_DIR/go, so all
are mid-trial together. MODE `slow` scores each candidate after a short sleep; `hang` writes
SYNC_DIR/scoring-<pid> and blocks inside its first candidate, for the test to kill it there.
"""

import json
import os
import sys
import time
from pathlib import Path

from autokd.search import SearchConfig, run_search
from autokd.search.evaluate import CandidateEvaluator


def main(config_json: str, sync: str, mode: str) -> None:
    sync_dir, score = Path(sync), CandidateEvaluator.score

    def patched(self, spec):
        (sync_dir / f"ready-{os.getpid()}").touch()
        while not (sync_dir / "go").exists():
            time.sleep(0.05)
        if mode == "hang":
            (sync_dir / f"scoring-{os.getpid()}").touch()
            time.sleep(3600)
        time.sleep(0.2)
        return score(self, spec)

    CandidateEvaluator.score = patched
    run_search(SearchConfig(**json.loads(config_json)), progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
