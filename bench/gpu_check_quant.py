"""GPTQ / AWQ phases of bench/gpu_check.py: W4 g128 block by block through the building blocks `accbench run`
calls (transform_model, fake_quantize_model), the model loaded as a run loads it (placement offload on GPU:
the rest of the model on CPU, one block on the GPU at a time); time, peak GPU and host memory.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

from gpu_check import Ctx, gb, host_rss_bytes
from gpu_check_phases import _cuda, _host_peak, _peak_gpu, _reset_peak, _sync, _text_file


def _keep_blocks(model: Any, n: int | None) -> tuple[int, list]:
    """Run the quantizer on the first n decoder blocks; the others stay referenced (in host memory, as in a
    full run) but out of the model. Returns (blocks in the model before, the blocks set aside)."""
    import torch.nn as nn

    from accbench.models import find_parts

    blocks = find_parts(model).blocks
    total = len(blocks)
    if n is None or n >= total:
        return total, []
    name = next(k for k, m in model.named_modules() if m is blocks)
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, nn.ModuleList(list(blocks)[:n]))
    return total, list(blocks)[n:]


@contextlib.contextmanager
def _block_progress(model: Any, path: Path) -> Iterator[None]:
    """Write, as each decoder block first runs, how many have started and when: if the phase is killed at its
    time budget, gpu_check reports these instead of nothing."""
    from accbench.models import find_parts

    t0, seen = time.perf_counter(), {}

    def hook(i: int) -> Any:
        def fn(mod: Any, args: Any) -> None:
            if i not in seen:
                seen[i] = round(time.perf_counter() - t0, 2)
                path.write_text(json.dumps({"blocks_started": len(seen), "started_at_s": seen}))
        return fn

    handles = [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(find_parts(model).blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _last_hidden(model: Any, ids: Any, device: str) -> Any:
    import torch

    with torch.inference_mode():
        return model.base_model(input_ids=ids.to(device), use_cache=False).last_hidden_state.float().cpu()


def phase_quant(ctx: Ctx, method: str) -> dict:
    """W4 g128 `method` block by block (GPU: placement offload, one block on the GPU at a time)."""

    from accbench.quant.methods import METHOD_SPECIAL_KEYS
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts
    from accbench.models import load_model
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.runner import fake_quantize_model, transform_model
    from accbench.quant.spec import QuantSpec

    s = ctx.size
    placement = "offload" if _cuda(ctx) else "single"
    t0 = time.perf_counter()
    loaded = load_model(ctx.model_path, s.dtype, device=ctx.device, placement=placement)
    load_s = time.perf_counter() - t0
    model = loaded.model
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    total, aside = _keep_blocks(model, s.quant_blocks)
    run_blocks = total - len(aside)
    samples = calib_samples(load_texts("custom", str(_text_file(ctx))), loaded.tokenizer, "wikitext2_gptq",
                            s.calib_samples, s.calib_seq_len, 42)
    batches = calib_batches(samples, -1)
    special = {**METHOD_SPECIAL_KEYS[method]}
    if method == "Awq":
        special.update(trans=True, trans_version="v2", weight_clip=True)  # the README's Llama-3 example
    spec = QuantSpec(method, WeightQuantSpec(4, False, "per_group", 128), None, special, False, s.calib_seq_len)
    probe = batches[0][:1, :128]
    before = _last_hidden(model, probe, loaded.device)
    rss_loaded = host_rss_bytes()
    _reset_peak(ctx)
    with _host_peak() as host, _block_progress(model, ctx.work / f"phase_{method.lower()}.progress.json"):
        t0 = time.perf_counter()
        state = transform_model(model, spec, batches, loaded.device)
        _sync(ctx)
        t1 = time.perf_counter()
        fake_quantize_model(model, spec, batches, loaded.device, state)
        _sync(ctx)
        t2 = time.perf_counter()
    peak = _peak_gpu(ctx)
    after = _last_hidden(model, probe, loaded.device)
    rel = float((after - before).norm() / before.norm())
    wall = t2 - t0
    return dict(method=method, bits=4, group_size=128, special=special, placement=placement,
                calib_samples=sum(len(b) for b in batches), calib_seq_len=s.calib_seq_len, blocks_run=run_blocks,
                blocks_total=total, load_s=round(load_s, 2), transform_s=round(t1 - t0, 2),
                quantize_s=round(t2 - t1, 2), wall_s=round(wall, 2), per_block_s=round(wall / run_blocks, 3),
                est_all_blocks_s=round(wall / run_blocks * total, 1),
                est_note=None if run_blocks == total else f"extrapolated from {run_blocks} of {total} blocks",
                model_gb=gb(model_bytes), host_rss_after_load_gb=gb(rss_loaded), peak_host_rss_gb=gb(host["peak"]),
                **peak, output_rel_err=round(rel, 5), gptq_error_sum=sum(state.losses.values()) or None,
                blocks_set_aside=len(aside))
