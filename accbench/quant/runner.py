"""Quantize a whole model with one method: check the inputs, transform, then fake-quantize.

`check_quant` runs before calibration (and works on a meta-device model built from config.json, so
the pipeline can call it before any weights load). `transform_model` applies the method's
function-preserving transform (QuaRot's rotation of the whole model; AWQ, SmoothQuant block by block; nothing
for RTN and GPTQ) and returns
the state the fake-quant step needs; the caller evaluates/saves the `transformed` model in between;
`fake_quantize_model` then rounds every decoder-block linear (GPTQ with its own calibration pass) and,
when `act` is set, quantizes every such linear's input at run time (forward pre-hooks).
Embeddings and the LM head stay in full precision, as in llmc.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from accbench.errors import AccbenchError
from accbench.quant.blockwise import BlockInputs, catch_block_inputs, collect_input_ranges, run_blockwise
from accbench.quant.methods import METHODS, needs_calibration
from accbench.quant.options import option_problems
from accbench.quant.quantizer import fake_quantize_weight, install_act_quant
from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench.quant")


def _blocks(model: Any) -> tuple[Any, str]:
    from accbench.models import find_parts

    try:
        parts = find_parts(model)
    except AccbenchError as exc:
        raise AccbenchError(f"cannot quantize: {exc.message}", exc.hint) from None
    name = next((n for n, m in model.named_modules() if m is parts.blocks), "blocks")
    return parts.blocks, name


def check_quant(model: Any, spec: QuantSpec, has_calib: bool) -> None:
    """Every problem we can see before calibration, as one AccbenchError (what, where, how to fix)."""
    problems: list[str] = []
    blocks, prefix = _blocks(model)
    linears = {f"{prefix}.{i}.{n}": m for i, b in enumerate(blocks) for n, m in b.named_modules()
               if isinstance(m, nn.Linear)}
    if not linears:
        problems.append(f"the decoder blocks ({prefix}) hold no nn.Linear layers to quantize")
    problems += _shape_problems(spec, blocks, prefix)
    if (spec.ignored_names or spec.ignored_full) and not any(
            spec.is_ignored(prefix, i, n) for i, b in enumerate(blocks) for n, m in b.named_modules()
            if isinstance(m, nn.Linear)):
        problems.append("ignored_layers matches no linear layer of the model: check block_ids, layer_names (names "
                        f"inside a block, e.g. self_attn.q_proj) and speical_names (full names, e.g. {prefix}.0.mlp.down_proj)")
    if spec.static_acts() and not has_calib:
        problems.append("static activation quantization (quant.act.static: true) needs calibration data: add a calib section")
    if needs_calibration(spec.method, False) and not has_calib:
        problems.append(f"quant method {spec.method} needs calibration data: add a calib section")
    options = METHODS[spec.method].options
    bad_options = option_problems(spec.method, options, spec.special)
    problems += bad_options or options.of(spec).problems(spec.weight)
    if not bad_options and METHODS[spec.method].check is not None:
        problems += METHODS[spec.method].check(model, spec)
    if problems:
        raise AccbenchError("cannot quantize:\n" + "\n".join(f"  - {p}" for p in problems),
                            "fix the quant section (see docs/quantization.md)")


def _shape_problems(spec: QuantSpec, blocks: Any, prefix: str) -> list[str]:
    """group_size / block_size that do not divide the shapes of the linears they apply to."""
    groups: dict[int, list[tuple[str, int]]] = {}
    tiles: dict[int, list[str]] = {}
    all_linears, acts = [], []
    for i, b in enumerate(blocks):
        for n, m in b.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            all_linears.append(m)
            w = spec.weight_for(f"{prefix}.{i}.", n)
            full = f"{prefix}.{i}.{n}"
            a = spec.act_for(f"{prefix}.{i}.", n)
            if a is not None and a.granularity == "per_group" and m.in_features >= a.group_size \
                    and m.in_features % a.group_size:
                acts.append(f"quant.act.group_size {a.group_size} does not divide the input dimension "
                            f"{m.in_features} of {full}")
            if w is None:
                continue
            if w.w48 is not None:
                for level in (w.w48.bit8, w.w48.bit4):
                    if level.granularity == "per_group" and m.in_features % level.group_size:
                        groups.setdefault(level.group_size, []).append((full, m.in_features))
            elif w.granularity == "per_group" and m.in_features % w.group_size:
                groups.setdefault(w.group_size, []).append((full, m.in_features))
            elif w.granularity == "per_block" and (m.in_features % w.block_size or m.out_features % w.block_size):
                tiles.setdefault(w.block_size, []).append(full)
    out = []
    for gs, bad in groups.items():
        n, dim = bad[0]
        common = sorted({d for d in (16, 32, 64, 128, 256) if all(m.in_features % d == 0 for m in all_linears)})
        out.append(f"quant.weight.group_size {gs} does not divide the input dimension {dim} of {n} "
                   f"({len(bad)} layers affected); group sizes that fit every layer: {common or 'none'}")
    for bs, bad_block in tiles.items():
        out.append(f"quant.weight.block_size {bs} does not divide the shape of {bad_block[0]} "
                   f"({len(bad_block)} layers affected)")
    from accbench.quant.mixbits import named_blocks

    beyond = sorted(b for b in named_blocks(spec.mix_bits) if b >= len(blocks))
    if beyond:  # a config written for a deeper model: those entries match nothing here
        log.warning("quant.mix_bits names block(s) %s but the model has %d decoder blocks; those entries match no "
                    "linear", beyond, len(blocks))
    return out + acts[:1]


@contextlib.contextmanager
def _no_offload(model: Any, device: str) -> Iterator[None]:
    """Block offload hooks would move blocks back to CPU mid-calibration: lift them while we work."""
    from accbench.models import disable_block_offload, enable_block_offload

    had = bool(getattr(model, "_accbench_offload_handles", []))
    if had:
        disable_block_offload(model)
    try:
        yield
    finally:
        if had:
            enable_block_offload(model, device)


def _quantized_view(spec: QuantSpec, state: QuantState, prefix: str, weights_too: bool):
    """A context factory for run_blockwise's quant_out: the block as fake_quant will see it."""

    @contextlib.contextmanager
    def ctx(i: int, block: nn.Module) -> Iterator[None]:
        bp = f"{prefix}.{i}."
        lins = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        saved = {n: m.weight.data for n, m in lins.items()}
        handles = []
        try:
            if weights_too:
                for n, m in lins.items():
                    wspec = spec.weight_for(bp, n)
                    if wspec is None:
                        continue
                    clip = state.clips.get(bp + n)
                    clip = None if clip is None else (clip[0].to(m.weight.device), clip[1].to(m.weight.device))
                    m.weight.data = fake_quantize_weight(m.weight.data, wspec, clip)
            handles = _install_acts(spec, state, bp, lins)
            yield
        finally:
            for h in handles:
                h.remove()
            for n, m in lins.items():
                m.weight.data = saved[n]

    return ctx


def _install_acts(spec: QuantSpec, state: QuantState, block_prefix: str, lins: dict[str, nn.Module]) -> list:
    """Activation fake quantization on the block's linears, each with its own spec (mix_bits) or none."""
    acts = {n: spec.act_for(block_prefix, n) for n in lins}
    acts = {n: a for n, a in acts.items() if a is not None}
    ranges = {block_prefix + n: state.act_ranges[block_prefix + n] for n, a in acts.items() if a.static}
    return install_act_quant({block_prefix + n: lins[n] for n in acts}, {block_prefix + n: a for n, a in acts.items()},
                             ranges)


def _hist_bits(spec: QuantSpec, block_prefix: str) -> Callable[[str], int | None]:
    """name -> bits of the histogram search for linears whose inputs take llmc's static_hist range."""
    from accbench.quant.floats import float_bits

    def bits(name: str) -> int | None:
        a = spec.act_for(block_prefix, name)
        if a is None or not a.static or a.calib_algo != "static_hist":
            return None
        return float_bits(a.bit) if isinstance(a.bit, str) else a.bit
    return bits


@contextlib.contextmanager
def _keep_ignored(spec: QuantSpec, prefix: str, i: int, block: nn.Module, state: QuantState) -> Iterator[None]:
    """llmc's ignored_layers: the block's ignored linears leave the quantize step with the weights they had
    (and without codes for the real-quant export)."""
    kept = {n: m.weight.data.clone() for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and spec.is_ignored(prefix, i, n)}
    yield
    mods = dict(block.named_modules())
    for n, w in kept.items():
        mods[n].weight.data.copy_(w)
        if state.codes is not None:
            state.codes.pop(f"{prefix}.{i}.{n}", None)


def transform_model(model: Any, spec: QuantSpec, batches: list[torch.Tensor] | None, device: str) -> QuantState:
    """Run the method's equivalent transform (if any) block by block; collect static act ranges if needed."""
    method = METHODS[spec.method]
    state = QuantState()
    act_static = bool(spec.static_acts())
    collect_here = act_static and not method.quantize_calibrated
    if method.prepare is not None:
        with _no_offload(model, device), torch.no_grad():
            method.prepare(model, spec, state)
    if method.transform is None and not collect_here:
        return state
    blocks, prefix = _blocks(model)

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        if method.transform is not None:
            method.transform(f"{prefix}.{i}.", block, inputs, spec, state)
        if collect_here:
            collect_input_ranges(block, inputs, f"{prefix}.{i}.", state.act_ranges, _hist_bits(spec, f"{prefix}.{i}."))

    with _no_offload(model, device), torch.no_grad():
        inputs = catch_block_inputs(model, blocks, batches or [], device)
        run_blockwise(blocks, inputs, device, process, spec.quant_out, _quantized_view(spec, state, prefix, True),
                      desc=f"{spec.method} transform")
    state.fp_hidden = None  # OmniQuant's float chain: calibration activations no longer needed
    return state


def fake_quantize_model(model: Any, spec: QuantSpec, batches: list[torch.Tensor] | None, device: str,
                        state: QuantState) -> list:
    """Fake-quantize every decoder-block linear in place; install activation quantization; return hook handles."""
    method = METHODS[spec.method]
    blocks, prefix = _blocks(model)
    with _no_offload(model, device), torch.no_grad():
        if method.quantize_calibrated:
            act_static = bool(spec.static_acts())

            def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
                with _keep_ignored(spec, prefix, i, block, state):
                    method.quantize(f"{prefix}.{i}.", block, inputs, spec, state)
                if act_static:
                    collect_input_ranges(block, inputs, f"{prefix}.{i}.", state.act_ranges,
                                         _hist_bits(spec, f"{prefix}.{i}."))

            inputs = catch_block_inputs(model, blocks, batches or [], device)
            run_blockwise(blocks, inputs, device, process, spec.quant_out, _quantized_view(spec, state, prefix, False),
                          desc=f"{spec.method} quantize")
        else:
            for i, block in enumerate(blocks):
                with _keep_ignored(spec, prefix, i, block, state):
                    method.quantize(f"{prefix}.{i}.", block, spec, state)
    handles: list = []
    for i, b in enumerate(blocks if not method.quantizes_act else []):
        handles += _install_acts(spec, state, f"{prefix}.{i}.",
                                 {n: m for n, m in b.named_modules() if isinstance(m, nn.Linear)})
    if handles:
        model._accbench_act_quant_handles = handles
    return handles
