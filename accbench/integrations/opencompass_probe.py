"""Read an OpenCompass config inside OpenCompass's own environment and print what accbench needs, as JSON.

Runs as a plain script with OpenCompass's python (it never imports accbench): accbench's environment has
neither mmengine nor OpenCompass. Usage: `python opencompass_probe.py USER_CONFIG OUT_JSON`.
The output holds the config's `models` and `infer` sections with classes and functions written as their
dotted import names (the form OpenCompass itself writes when it dumps a config), so accbench can check the
model entries and build a generated config from them without importing OpenCompass.
"""

import json
import os
import sys

# this folder holds accbench's opencompass.py, which would shadow the real opencompass package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def to_plain(obj):
    """Config values -> JSON: classes and functions become 'module.Name', unknown objects their str()."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, type) or callable(obj):
        return f"{obj.__module__}.{getattr(obj, '__qualname__', obj.__name__)}"
    return str(obj)


def main(cfg_path: str, out_path: str) -> None:
    from mmengine.config import Config

    cfg = Config.fromfile(cfg_path, format_python_code=False)
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    out = {
        "keys": sorted(data),
        "models": to_plain(data.get("models")),
        "infer": to_plain(data.get("infer")),
        "n_datasets": len(data.get("datasets") or []),
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
