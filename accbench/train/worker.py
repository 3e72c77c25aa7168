"""Entry point of one training variant's process: `python -m accbench.train.worker --spec SPEC.json`.

Run as a plain process on CPU or one device, or by torchrun (`torchrun --nproc_per_node N -m
accbench.train.worker ...`), where the Trainer picks up the distributed environment by itself.
Its output goes to the variant's log; its results are the Hugging Face files it leaves in output_dir.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_STARTED_AT = time.time()  # before torch/transformers load: the import cost shows in the timing marks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="accbench.train.worker", description=__doc__)
    p.add_argument("--spec", required=True, help="TrainSpec JSON written by the pipeline")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from accbench.train.clm import TrainSpec, train_clm

    train_clm(TrainSpec.load(args.spec), started_at=_STARTED_AT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
