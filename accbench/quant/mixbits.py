"""llmc's mixed precision by layer (`quant.mix_bits`): some linears get their own weight/act bits, or stay float.

Meaning (llmc's `alloc_bits` / `get_wquantizer` before b0bf39e of May 2025, when llmc stopped reading
`mix_bits` in favour of `ignored_layers`; its configs still ship it):

- `setting_0`, `setting_1`, ... are read in that order. Each `layer_name` entry is a substring of a linear's name
  inside its block (`down_proj`, `self_attn.o_proj`), for every block, or `name#i-j-k` for blocks i, j, k only
  (indices joined by '-', not a range).
- Per block, llmc keeps a map substring -> setting; a later setting naming the same substring (for that block)
  replaces the earlier one in place. A linear takes the setting of the first substring in that map, in the order
  the substrings were first named, that occurs in its name; a linear no substring matches keeps `quant.weight` /
  `quant.act`.
- `do_quant: false`: the linear stays in float (weights and inputs). `do_quant: true`: its weights use the
  setting's `weight` (on its own, not merged with `quant.weight`) and its inputs the setting's `act`; a setting
  without `act` leaves the linear's inputs unquantized, whatever `quant.act` says.
- AWQ reads the setting of a subset's first linear: a float first linear leaves the subset unscaled, and its
  `act` quantizes the subset's input during the scale search; each linear's own weights spec is used to round it
  in the search and in the clip search (float linears are not clipped). GPTQ, RTN and SmoothQuant round each
  linear with its own spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec


@dataclass(frozen=True)
class MixSetting:
    """One `setting_<i>`: which linears (substring, block indices or None for every block) and how."""

    layers: tuple[tuple[str, tuple[int, ...] | None], ...]
    do_quant: bool = True
    weight: WeightQuantSpec | None = None
    act: ActQuantSpec | None = None

    @staticmethod
    def parse_layer_names(names: list[str]) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
        """llmc's `name` / `name#i-j-k` entries as (substring, block indices or None)."""
        out = []
        for item in names:
            name, _, blocks = item.partition("#")
            out.append((name, tuple(int(b) for b in blocks.split("-")) if blocks else None))
        return tuple(out)


def block_map(settings: tuple[MixSetting, ...], block: int) -> dict[str, int]:
    """llmc's mix_bits_map for one block: substring -> index of the setting it takes (insertion ordered)."""
    out: dict[str, int] = {}
    for i, s in enumerate(settings):
        for name, blocks in s.layers:
            if blocks is None or block in blocks:
                out[name] = i
    return out


def setting_for(settings: tuple[MixSetting, ...], block: int, name: str) -> MixSetting | None:
    """The setting linear `name` of block `block` takes, or None (it keeps quant.weight / quant.act)."""
    for sub, i in block_map(settings, block).items():
        if sub in name:
            return settings[i]
    return None


def named_blocks(settings: tuple[MixSetting, ...]) -> set[int]:
    """Every block index a `name#i-j` entry names (to check them against the model)."""
    return {b for s in settings for _, blocks in s.layers for b in (blocks or ())}
