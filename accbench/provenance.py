"""The provenance of a run: model, method and options, calibration data, seeds, config hash, command line
and machine, recorded in results.json when the run starts (versions are collected beside it)."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from accbench.results import Provenance


def machine() -> dict[str, str]:
    """Host, OS, CPU count and the accelerators torch sees (torch is imported only if already loaded)."""
    out = {"host": platform.node(), "os": platform.platform(), "python": platform.python_version(),
           "cpus": str(os.cpu_count() or "?")}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["gpus"] = ", ".join(f"{n} x{names.count(n)}" for n in dict.fromkeys(names))
    return out


def command_line(argv: list[str]) -> list[str]:
    """argv as the user typed it: `python -m accbench` and the console script both show as `accbench`."""
    if argv and Path(argv[0]).name in ("__main__.py", "cli.py", "accbench"):
        return ["accbench", *argv[1:]]
    return list(argv)


def collect_provenance(cfg: Any, config_text: str, argv: list[str] | None = None) -> Provenance:
    """`cfg` is the RunConfig as run and `config_text` its resolved YAML (hashed)."""
    seeds = {"base": cfg.base.seed}
    if cfg.calib is not None:
        seeds["calib"] = cfg.calib.seed
    seeds.update({f"task:{t.name}": t.seed for t in cfg.tasks})
    seeds["compare_bootstrap"] = cfg.compare.seed
    method, options = None, {}
    if cfg.quant is not None:
        method, options = cfg.quant.method, cfg.quant.model_dump(mode="json", exclude={"method"})
    elif cfg.sparse is not None:
        method, options = cfg.sparse.method, cfg.sparse.model_dump(mode="json", exclude={"method"})
    elif cfg.train is not None:
        method, options = "training", {"variants": list(cfg.train.variants)}
    calib = cfg.calib.model_dump(mode="json", exclude_none=True) if cfg.calib is not None else {}
    m = cfg.model
    return Provenance(model=m.path, revision=m.revision, peft=m.peft, method=method, method_options=options,
                      calibration=calib, seeds=seeds,
                      config_sha256=hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
                      command=command_line(argv if argv is not None else sys.argv), machine=machine(),
                      started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
