"""The config's sections (llmc's and accbench's own), one pydantic model each; `RunConfig` (config.py) holds them.

Training sections are in config_train.py, task sections in config_tasks.py.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

def suggest(word: str, options: Any) -> str:
    """The hint ` (did you mean 'x'?)` for the option nearest to a misspelled `word`, or an empty string."""
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ----------------------------------------------------------------------------- llmc sections


class BaseCfg(Section):
    seed: int = 42
    output_dir: str = "runs"
    run_name: str | None = None


class ModelCfg(Section):
    path: str
    revision: str | None = None  # a branch, tag or commit of a hub model
    peft: str | None = None  # a PEFT adapter (path or hub id) applied on top of the model
    from_pretrained: dict[str, Any] = Field(default_factory=dict)  # anything else from_pretrained takes
    type: str | None = None  # llmc names the architecture; we discover it from config.json
    tokenizer_path: str | None = None
    tokenizer_mode: Literal["fast", "slow"] = "fast"
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    placement: Literal["single", "device_map", "offload"] = "single"
    device: str | None = None  # default: cuda when available, else cpu


class TextDataCfg(Section):
    """A text dataset: a built-in one, llmc's names read from disk or the hub, or a local file."""

    name: str = "custom"
    download: bool = False
    path: str | None = None
    text_column: str = "text"
    split: str | None = None

    @model_validator(mode="after")
    def _needs_path(self) -> "TextDataCfg":
        if not self.download and not self.name.startswith("builtin:") and not self.path:
            raise ValueError(
                f"dataset '{self.name}' has download: false but no path; set path to the data on disk "
                "(a datasets.save_to_disk folder, .txt, .jsonl or .parquet) or set download: true"
            )
        return self


class CalibCfg(TextDataCfg):
    n_samples: int = Field(128, ge=1)
    bs: int = -1
    seq_len: int = Field(512, ge=8)
    preproc: str = "txt_general_preproc"
    seed: int = 42


class FidelityCfg(Section):
    top_k: int = Field(64, ge=1)


EVAL_POSITIONS = ("pretrain", "transformed", "fake_quant")


class EvalCfg(TextDataCfg):
    eval_pos: list[str] = Field(default_factory=lambda: ["pretrain"])
    bs: int = Field(1, ge=1)
    seq_len: int = Field(2048, ge=8)
    inference_per_block: bool = False
    fidelity: bool | FidelityCfg = False
    eval_token_consist: bool = False  # llmc's token-consistency check; served by `fidelity` (top-1 agreement)
    num_samples: int | None = Field(None, ge=1)  # cap on windows, for quick looks
    allow_beyond_max_positions: bool = False  # seq_len longer than the model's positions is an error unless set

    @field_validator("eval_pos", mode="before")
    @classmethod
    def _pos_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("eval_pos")
    @classmethod
    def _known_pos(cls, v: list[str]) -> list[str]:
        for p in v:
            if p not in EVAL_POSITIONS:
                raise ValueError(f"unknown eval_pos '{p}'; valid: {', '.join(EVAL_POSITIONS)}")
        return v

    def fidelity_top_k(self) -> int | None:
        if isinstance(self.fidelity, FidelityCfg):
            return self.fidelity.top_k
        return 64 if (self.fidelity or self.eval_token_consist) else None


def _bit_and_type(bit: "int | str", quant_type: str) -> None:
    """llmc: integer bits with int-quant, a float format (e4m3, e5m2) with quant_type: float-quant."""
    if isinstance(bit, str) and quant_type != "float-quant":
        raise ValueError(f"bit '{bit}' is a float format: set quant_type: float-quant")
    if isinstance(bit, int) and quant_type == "float-quant":
        raise ValueError("quant_type float-quant takes a float format as bit: e4m3 or e5m2")


def _bit_value(bit: "int | str") -> "int | str":
    if isinstance(bit, int) and not 2 <= bit <= 8:
        raise ValueError(f"Input should be less than or equal to 8 and at least 2 (got {bit})")
    if isinstance(bit, str) and bit not in ("e4m3", "e5m2"):
        raise ValueError(f"float format '{bit}' is not supported; valid: e4m3, e5m2")
    return bit


class _QuantBits(Section):
    """`bit` and `quant_type`, as llmc's weight and act sections share them."""

    bit: int | str
    quant_type: Literal["int-quant", "float-quant"] = "int-quant"

    @field_validator("bit")
    @classmethod
    def _bit_range(cls, v: int | str) -> int | str:
        return _bit_value(v)

    @model_validator(mode="after")
    def _bit_type(self) -> "_QuantBits":
        _bit_and_type(self.bit, self.quant_type)
        return self


class WeightQuantCfg(_QuantBits):
    bit: int | str = 4
    symmetric: bool = False
    granularity: Literal["per_tensor", "per_channel", "per_group", "per_block"] = "per_group"
    group_size: int = 128
    block_size: int = Field(128, ge=1)
    calib_algo: Literal["minmax", "mse"] = "minmax"
    int_range: list[int] | None = None

    @model_validator(mode="after")
    def _group(self) -> "WeightQuantCfg":
        if self.granularity == "per_group" and self.group_size <= 0:
            raise ValueError("granularity per_group needs a positive group_size")
        return self


class ActQuantCfg(_QuantBits):
    bit: int | str = 8
    symmetric: bool = True
    granularity: Literal["per_token", "per_tensor"] = "per_token"
    static: bool = False


def built_methods() -> list[str]:
    """The names of the quantization methods accbench has built."""
    return list(_quant_methods())


def _quant_methods() -> dict[str, Any]:
    """The method table (quant/methods.py): each method's code and options class. Imports torch."""
    from accbench.quant.methods import METHODS

    return METHODS


class QuantCfg(Section):
    method: str
    weight: WeightQuantCfg = Field(default_factory=WeightQuantCfg)
    act: ActQuantCfg | None = None
    special: dict[str, Any] = Field(default_factory=dict)
    quant_out: bool = False

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        names = list(_quant_methods())
        canon = {m.lower(): m for m in names}.get(v.lower())
        if canon is None:
            raise ValueError(f"unknown quant method '{v}'{suggest(v, names)}; supported: {', '.join(names)}")
        return canon

    @field_validator("special")
    @classmethod
    def _special_keys(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """`special` against the method's options class (quant/<method>.py): unknown keys, bad values."""
        from accbench.quant.options import option_problems

        method = info.data.get("method")
        if method is None:
            return v
        problems = option_problems(method, _quant_methods()[method].options, v)
        if problems:
            raise ValueError("; ".join(problems))
        return v

    def special_with_defaults(self) -> dict[str, Any]:
        """The method's options with its defaults filled in (as a plain mapping, for QuantSpec)."""
        return {**_quant_methods()[self.method].options.defaults(), **self.special}


class IgnoredLayersCfg(Section):
    """llmc's top-level `ignored_layers`: linears kept in high precision. A linear is ignored when its block
    index is in `block_ids` (ints or 'a-b' ranges, inclusive) and its name in the block is in `layer_names`,
    or when its full module name is in `speical_names` (llmc's spelling)."""

    block_ids: list[int | str] = Field(default_factory=list)
    layer_names: list[str] = Field(default_factory=list)
    speical_names: list[str] = Field(default_factory=list)

    @field_validator("block_ids")
    @classmethod
    def _ranges(cls, v: list[int | str]) -> list[int | str]:
        for item in v:
            if isinstance(item, str) and not re.fullmatch(r"\d+-\d+", item.strip()):
                raise ValueError(f"block id '{item}' is neither a block index nor a range like '15-23'")
        return v

    def blocks(self) -> set[int]:
        out: set[int] = set()
        for item in self.block_ids:
            if isinstance(item, int):
                out.add(item)
            else:
                a, b = (int(x) for x in item.strip().split("-"))
                out.update(range(a, b + 1))
        return out


class SaveCfg(Section):
    save_trans: bool = False
    save_fake: bool = False
    save_path: str | None = None


class OpenCompassCfg(Section):
    cfg_path: str
    output_path: str | None = None
    max_num_workers: int = Field(1, ge=1)
    num_gpus: int = Field(1, ge=0)
    python: str | None = None
    eval_pos: list[str] | None = None  # default: every evaluated position whose model is saved


# ----------------------------------------------------------------------------- accbench sections


Engine = Literal["hf", "vllm"]  # what answers task requests: Hugging Face in-process, or vLLM's offline engine


class RunnerCfg(Section):
    type: Literal["local", "ray"] = "local"
    engine: Engine = "hf"  # a task's own `engine:` overrides it
    max_num_workers: int = Field(1, ge=1)
    num_gpus: int = Field(1, ge=0)
    address: str | None = None


class GateCfg(Section):
    metric: str | None = None
    dataset: str | None = None
    task: str | None = None
    position: str | None = None
    max_relative_increase: float | None = None
    max_drop: float | None = None
    significance: float | None = Field(None, gt=0, lt=1)
    train_loss_diff: float | None = None
    max_kld: float | None = None
    min: float | None = None  # the candidate's own value must be at least this (e.g. MT-bench win_rate_adjusted)

    @model_validator(mode="after")
    def _one_bound(self) -> "GateCfg":
        bounds = [self.max_relative_increase, self.max_drop, self.train_loss_diff, self.max_kld, self.min]
        if all(b is None for b in bounds):
            raise ValueError("a gate needs a bound: max_relative_increase, max_drop, train_loss_diff, max_kld or min")
        return self


class CompareCfg(Section):
    baseline: str | None = None
    gates: list[GateCfg] = Field(default_factory=list)
    max_train_loss_diff: float | None = None  # shorthand gates, as in the training seed
    max_score_drop: float | None = None
    allow_different_train_data: bool = False  # compare variants even when they trained on other samples/tokens
    bootstrap_resamples: int = Field(10_000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
