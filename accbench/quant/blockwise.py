"""Block-by-block calibration: catch the first block's inputs, then run a method on one block at a time.

Only one decoder block (plus the calibration activations) sits on the accelerator at any moment; the
rest of the model stays wherever it was loaded (CPU for big models). For each block the runner
1. moves it to the device, 2. computes its float outputs (the next block's inputs, llmc's default),
3. runs the method's per-block function, 4. with `quant_out`, recomputes the outputs with the block
fake-quantized instead, 5. moves the block back. An out-of-memory error names the block.

`trace_block` finds, without per-family code, which linears share an input, which norm (if any)
produces that input, and the module that consumes it: the "subsets" AWQ and SmoothQuant scale.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from accbench.errors import AccbenchError

log = logging.getLogger("accbench.quant")

# consumer linear -> producer linear whose output channels feed it through a channel-wise linear map
# (attention mixes tokens, not channels; the gated MLP multiplies channel-wise): llmc's fc-fc subsets
FC_PAIRS = {"o_proj": "v_proj", "down_proj": "up_proj"}


class _Caught(Exception):
    pass


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per calibration batch, plus the call kwargs."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    @property
    def n_samples(self) -> int:
        return sum(h.shape[0] for h in self.hidden)


def to_device(obj: Any, device: Any) -> Any:
    """Move tensors nested in tuples/lists/dicts to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def catch_block_inputs(model: Any, blocks: Any, batches: list[torch.Tensor], device: str) -> BlockInputs:
    """Run the model up to its first block for each batch of token ids and keep what the block receives."""
    hidden: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []

    def grab(mod: Any, args: tuple, kw: dict) -> None:
        kw = dict(kw)
        x = args[0] if args else kw.pop("hidden_states")
        hidden.append(x.detach().to(device))
        kw = {k: v for k, v in kw.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        kwargs.append(to_device(kw, device))
        raise _Caught

    embed_device = model.get_input_embeddings().weight.device
    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids.to(embed_device), use_cache=False)
                except _Caught:
                    pass
    finally:
        handle.remove()
    if len(hidden) != len(batches):
        raise AccbenchError(f"could not catch the inputs of the first decoder block of {type(model).__name__}",
                            "the model's forward must call its decoder blocks in order")
    return BlockInputs(hidden, kwargs)


def block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def forward_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [block_output(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.kwargs)]


BlockFn = Callable[[int, nn.Module, BlockInputs], None]


def run_blockwise(blocks: Any, inputs: BlockInputs, device: str, process: BlockFn, quant_out: bool = False,
                  quantized: Callable[[int, nn.Module], contextlib.AbstractContextManager] | None = None,
                  desc: str = "quantize") -> None:
    """Apply `process(index, block, inputs)` to every block in order, feeding each block's outputs on.

    With `quant_out`, the next block sees this block's outputs computed inside `quantized(index, block)`
    (a context in which the block is fake-quantized); otherwise the float outputs computed before
    `process` ran (llmc's default).
    """
    from tqdm import tqdm

    for i, block in enumerate(tqdm(blocks, desc=desc, unit="block", leave=False)):
        home = next(block.parameters()).device
        try:
            block.to(device)
            outs = None if quant_out else forward_block(block, inputs)
            process(i, block, inputs)
            if quant_out:
                ctx = quantized(i, block) if quantized is not None else contextlib.nullcontext()
                with ctx:
                    outs = forward_block(block, inputs)
        except torch.OutOfMemoryError:
            block.to(home)
            raise AccbenchError(
                f"out of memory on {device} while quantizing decoder block {i} ({type(block).__name__}) with "
                f"{inputs.n_samples} calibration samples",
                "lower calib.n_samples or calib.seq_len, or set calib.bs to a small positive number (e.g. 1) "
                "so calibration activations are processed in smaller batches") from None
        block.to(home)
        inputs.hidden = outs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- structure of a block


@dataclass
class Subset:
    """Linears that read the same tensor, what produces it, and the module to replay to measure output error."""

    layers: list[str]  # linear names in the block
    prev: str | None  # name of the norm or linear whose output is the shared input (None if neither)
    prev_kind: str  # "norm" | "linear" | "none"
    inspect: str  # module whose output AWQ compares (the layers' common parent, or the single layer)


def _is_norm(mod: nn.Module) -> bool:
    return "norm" in type(mod).__name__.lower() and getattr(mod, "weight", None) is not None


def _common_parent(names: list[str]) -> str:
    """The deepest module holding all `names` ('' if only the block does); a single layer is its own."""
    if len(names) == 1:
        return names[0]
    common = []
    for seg in zip(*[n.split(".")[:-1] for n in names]):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    return ".".join(common)


def trace_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> list[Subset]:
    """Group the block's linears by shared input, in execution order, and find each group's producer."""
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    norms = {n: m for n, m in block.named_modules() if _is_norm(m)}
    norm_out: dict[int, str] = {}
    groups: list[tuple[int, list[str]]] = []
    keep: list[torch.Tensor] = []  # hold every tensor whose id we record, so no id is reused mid-trace
    handles = []

    def on_norm(name: str) -> Callable:
        def hook(mod: Any, args: tuple, out: Any) -> None:
            keep.append(block_output(out))
            norm_out[id(keep[-1])] = name
        return hook

    def on_linear(name: str) -> Callable:
        def hook(mod: Any, args: tuple) -> None:
            keep.append(args[0])
            key = id(args[0])
            for k, names in groups:
                if k == key:
                    names.append(name)
                    return
            groups.append((key, [name]))
        return hook

    for n, m in norms.items():
        handles.append(m.register_forward_hook(on_norm(n)))
    for n, m in linears.items():
        handles.append(m.register_forward_pre_hook(on_linear(n)))
    try:
        with torch.no_grad():
            block(hidden[:1], **_first_row_kwargs(kwargs))
    finally:
        for h in handles:
            h.remove()

    subsets = []
    for key, names in groups:
        if key in norm_out:
            subsets.append(Subset(names, norm_out[key], "norm", _common_parent(names)))
            continue
        leaf = names[0].rsplit(".", 1)[-1]
        prev = None
        if len(names) == 1 and leaf in FC_PAIRS:
            cand = names[0][: len(names[0]) - len(leaf)] + FC_PAIRS[leaf]
            if cand in linears and linears[cand].out_features == linears[names[0]].in_features:
                prev = cand
        subsets.append(Subset(names, prev, "linear" if prev else "none", _common_parent(names)))
    return subsets


def _first_row_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Kwargs for a 1-row batch: slice per-row tensors such as a [B, 1, T, T] attention mask."""
    out = {}
    for k, v in kwargs.items():
        if k == "attention_mask" and isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] > 1:
            v = v[:1]
        out[k] = v
    return out


# ----------------------------------------------------------------------------- capturing inputs of modules


@dataclass
class ModuleCalls:
    """For one module: its input tensor per batch and how it was called (to replay with a new input)."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    templates: list[tuple[tuple, dict]] = field(default_factory=list)


_SLOT = object()


def capture_calls(block: nn.Module, inputs: BlockInputs, names: list[str]) -> dict[str, ModuleCalls]:
    """Forward the block over all batches, recording each named module's first input and call signature."""
    calls = {n: ModuleCalls() for n in names}
    handles = []

    def make(name: str) -> Callable:
        def hook(mod: Any, args: tuple, kw: dict) -> None:
            if args:
                x, tmpl = args[0], ((_SLOT,) + tuple(args[1:]), dict(kw))
            else:
                x = kw["hidden_states"]
                tmpl = (tuple(args), {**kw, "hidden_states": _SLOT})
            calls[name].inputs.append(x.detach())
            calls[name].templates.append(tmpl)
        return hook

    modules = dict(block.named_modules())
    for n in names:
        handles.append(modules[n].register_forward_pre_hook(make(n), with_kwargs=True))
    try:
        forward_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def replay(module: nn.Module, template: tuple[tuple, dict], x: torch.Tensor) -> torch.Tensor:
    """Call `module` as it was called during capture, with `x` in place of its input."""
    args, kw = template
    args = tuple(x if a is _SLOT else a for a in args)
    kw = {k: (x if v is _SLOT else v) for k, v in kw.items()}
    with torch.no_grad():
        return block_output(module(*args, **kw))


@contextlib.contextmanager
def swapped_weights(linears: dict[str, nn.Linear], new: Callable[[str, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Temporarily replace each linear's weight by `new(name, weight)`; restore the originals after."""
    saved = {n: m.weight.data for n, m in linears.items()}
    try:
        for n, m in linears.items():
            m.weight.data = new(n, m.weight.data)
        yield
    finally:
        for n, m in linears.items():
            m.weight.data = saved[n]


def each_linear_input(block: nn.Module, inputs: BlockInputs, visit: Callable[[str, torch.Tensor], None]) -> None:
    """Forward the block over every calibration batch, calling `visit(name, input)` for each linear it runs."""
    handles = []
    for n, m in block.named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod: Any, args: tuple, name: str = n) -> None:
                visit(name, args[0].detach())
            handles.append(m.register_forward_pre_hook(hook))
    try:
        forward_block(block, inputs)
    finally:
        for h in handles:
            h.remove()


def collect_input_ranges(block: nn.Module, inputs: BlockInputs, prefix: str,
                         ranges: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Record the min and max over all calibration tokens of every linear's input (static act quant)."""
    def visit(name: str, x: torch.Tensor) -> None:
        key = f"{prefix}{name}"
        lo, hi = x.min().float().cpu(), x.max().float().cpu()
        if key in ranges:
            lo, hi = torch.minimum(lo, ranges[key][0]), torch.maximum(hi, ranges[key][1])
        ranges[key] = (lo, hi)

    each_linear_input(block, inputs, visit)
