"""Model backends: what answers requests on a model, all behind the one contract of base.py (`ModelBackend`).

hf.py is the in-process Hugging Face backend; vllm.py answers through vLLM's offline engine (the `vllm` extra).
A new backend is one file here implementing `ModelBackend`
plus one line in `BACKENDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accbench.errors import AccbenchError
from accbench.evaluate.backends.base import BackendStats, BatchSize, ModelBackend

if TYPE_CHECKING:
    from accbench.models import LoadedModel
    from accbench.quant.kvcache import KVCacheQuantizer

__all__ = ["BACKENDS", "BackendStats", "BatchSize", "ModelBackend", "create_backend"]


def _hf() -> type[ModelBackend]:
    from accbench.evaluate.backends.hf import HFBackend

    return HFBackend


def _vllm() -> type[ModelBackend]:
    from accbench.evaluate.backends.vllm import VLLMBackend

    return VLLMBackend


BACKENDS = {"hf": _hf, "vllm": _vllm}  # name -> the class (imported when asked for: backends pull in torch)


def create_backend(loaded: "LoadedModel", batch_size: BatchSize = "auto", name: str = "hf",
                   gpus: int = 1, kv: "KVCacheQuantizer | None" = None) -> ModelBackend:
    """The backend `name` over the model as it is at one position (`gpus`: GPUs per replica; `kv`: the KV-cache
    quantization its forwards apply, quant.kvcache at fake_quant, which only the in-process HF backend can)."""
    if kv is None:
        return BACKENDS[name]().create(loaded, batch_size, gpus)
    if name != "hf":
        raise AccbenchError(f"engine {name!r} cannot apply accbench's KV-cache quantization (quant.kvcache)",
                            "evaluate the tasks at fake_quant with engine: hf")
    from accbench.evaluate.backends.hf import HFBackend

    return HFBackend.create(loaded, batch_size, gpus, kv=kv)
