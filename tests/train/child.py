"""Run ``qkv train`` in this process, stopping the checkpoint writer at a chosen stage (a test helper).

    python child.py STAGE OCCURRENCE ACTION [GO_FILE] -- QKV-TRAIN-ARGUMENTS...

At the OCCURRENCE-th (1-based) time the writer in :mod:`qkv.checkpoint` reaches STAGE (see
``checkpoint._stage_hook``), ACTION happens:

- ``kill``: the process SIGKILLs itself (a crash in the middle of a write);
- ``block``: it sleeps until something kills it (so a test's kill surely lands before the run ends);
- ``wait``: it sleeps until GO_FILE exists, then goes on (so a signal surely arrives at a known step).

The exit status is ``qkv train``'s. Where QKV_TEST_PIDS names a directory, the process first writes its
id there, in a file named after its torchrun rank (so that a test can kill every rank at once).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from qkv import checkpoint, cli


def main(argv: list[str]) -> int:
    split = argv.index("--")
    (stage, occurrence, action, *rest), train_args = argv[:split], argv[split + 1 :]
    seen = 0

    def hook(name: str) -> None:
        nonlocal seen
        if name != stage:
            return
        seen += 1
        if seen != int(occurrence):
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while action == "block" or (action == "wait" and not Path(rest[0]).exists()):
            time.sleep(0.01)

    checkpoint._stage_hook = hook
    pids = os.environ.get("QKV_TEST_PIDS")
    if pids:
        Path(pids, os.environ.get("RANK", "0")).write_text(str(os.getpid()))
    return cli.main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
