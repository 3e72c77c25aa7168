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
    seed: int = 42  # default: base.seed (RunConfig)
    # llmc's chat calibration data (data/chat.py): custom_txt samples.json, ultrachat conversations
    apply_chat_template: bool = False
    add_answer: bool = False
    padding: bool = False

    @model_validator(mode="after")
    def _chat_data(self) -> "CalibCfg":
        """llmc's rules for its chat data: the chat options need custom_txt/custom_mm samples, and ultrachat
        goes with preproc ultrachat_general (and only it)."""
        custom, chat = self.name in ("custom_txt", "custom_mm"), self.name == "ultrachat"
        if (self.apply_chat_template or self.add_answer) and not custom:
            raise ValueError(f"apply_chat_template / add_answer apply to llmc's custom_txt samples (samples.json "
                             f"with question/answer), not to calib.name '{self.name}'")
        if chat != (self.preproc == "ultrachat_general"):
            raise ValueError("calib.name ultrachat goes with preproc: ultrachat_general (and that preproc with "
                             "ultrachat conversations)")
        return self


class FidelityCfg(Section):
    top_k: int = Field(64, ge=1)


EVAL_POSITIONS = ("pretrain", "transformed", "fake_quant", "fake_quant_wo_kv", "real_quant")
EVAL_TYPES = ("ppl", "decode_ppl", "token_acc")  # llmc's eval.type values accbench computes


class EvalCfg(TextDataCfg):
    eval_pos: list[str] = Field(default_factory=lambda: ["pretrain"])
    bs: int = Field(1, ge=1)
    seq_len: int = Field(2048, ge=8)
    inference_per_block: bool = False
    fidelity: bool | FidelityCfg = False
    eval_token_consist: bool = False  # llmc's token-consistency check; served by `fidelity` (top-1 agreement)
    num_samples: int | None = Field(None, ge=1)  # cap on windows, for quick looks; decode_ppl: rows (default 1)
    type: Literal["ppl", "decode_ppl", "token_acc"] = "ppl"  # llmc's eval types (docs/config.md)
    num_eval_tokens: int | None = Field(None, ge=1)  # decode_ppl: stop after this many decoded tokens (llmc)
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

    @model_validator(mode="after")
    def _decode_alone(self) -> "EvalCfg":
        if self.type == "decode_ppl" and (self.fidelity or self.eval_token_consist):
            raise ValueError("fidelity / eval_token_consist compare window distributions; decode_ppl has no "
                             "windows: set them on a block with type ppl (or token_acc)")
        return self

    def fidelity_top_k(self) -> int | None:
        if isinstance(self.fidelity, FidelityCfg):
            return self.fidelity.top_k
        return 64 if (self.fidelity or self.eval_token_consist or self.type == "token_acc") else None


FLOAT_BITS = ("e4m3", "e5m2", "e2m1", "e3m2", "e4m7")  # llmc's float formats (quant/floats.py implements them)


def _bit_and_type(bit: "int | str", quant_type: str) -> None:
    """llmc: integer bits with int-quant, a float format (e4m3, e2m1, ...) with quant_type: float-quant."""
    if isinstance(bit, str) and quant_type != "float-quant":
        raise ValueError(f"bit '{bit}' is a float format: set quant_type: float-quant")
    if isinstance(bit, int) and quant_type == "float-quant":
        raise ValueError(f"quant_type float-quant takes a float format as bit: {', '.join(FLOAT_BITS)}")


def _bit_value(bit: "int | str") -> "int | str":
    if isinstance(bit, int) and not 2 <= bit <= 8 and bit != 48:
        raise ValueError(f"Input should be less than or equal to 8 and at least 2, or 48 (two-level W4A8) (got {bit})")
    if isinstance(bit, str) and bit not in FLOAT_BITS:
        raise ValueError(f"float format '{bit}' is not supported; valid: {', '.join(FLOAT_BITS)}")
    return bit


def _int_range(v: list[int] | None) -> list[int] | None:
    if v is not None and (len(v) != 2 or v[0] >= v[1]):
        raise ValueError(f"int_range must be [qmin, qmax] with qmin < qmax (got {v})")
    return v


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


class W48LevelCfg(Section):
    """One level of llmc's two-level W4A8 weights (`bit4:` / `bit8:` under `quant.weight` with `bit: 48`)."""

    symmetric: bool
    granularity: Literal["per_channel", "per_group"] = "per_channel"
    group_size: int = Field(128, ge=1)
    int_range: list[int] | None = None
    scales_bit: int | None = Field(None, ge=2, le=16)
    scales_symmetric: bool = True
    zeros_bit: int | None = Field(None, ge=2, le=16)
    zeros_symmetric: bool = True

    _range = field_validator("int_range")(classmethod(lambda cls, v: _int_range(v)))


class WeightQuantCfg(_QuantBits):
    bit: int | str = 4
    symmetric: bool = False
    granularity: Literal["per_tensor", "per_channel", "per_group", "per_block"] = "per_group"
    group_size: int = 128
    block_size: int = Field(128, ge=1)
    calib_algo: Literal["minmax", "mse", "learnable"] = "minmax"
    int_range: list[int] | None = None
    round_zp: bool = True
    bit4: W48LevelCfg | None = None  # bit: 48 (two-level W4A8): the int4 level of the int8 codes
    bit8: W48LevelCfg | None = None  # bit: 48: the int8 level

    _range = field_validator("int_range")(classmethod(lambda cls, v: _int_range(v)))

    @model_validator(mode="after")
    def _group(self) -> "WeightQuantCfg":
        if self.granularity == "per_group" and self.group_size <= 0 and self.bit != 48:
            raise ValueError("granularity per_group needs a positive group_size")
        if (self.bit == 48) != (self.bit4 is not None and self.bit8 is not None):
            raise ValueError("bit: 48 (llmc's two-level W4A8 weights) needs both bit4 and bit8 settings, and "
                             "bit4/bit8 need bit: 48")
        if self.int_range is not None and self.quant_type == "float-quant":
            raise ValueError("int_range is an integer grid; float formats have their own range")
        return self


class ActQuantCfg(_QuantBits):
    bit: int | str = 8
    symmetric: bool = True
    granularity: Literal["per_token", "per_tensor", "per_group"] = "per_token"
    group_size: int | None = Field(None, ge=1)
    static: bool = False
    calib_algo: Literal["minmax", "static_hist"] = "minmax"

    @model_validator(mode="after")
    def _checks(self) -> "ActQuantCfg":
        if self.granularity == "per_group" and self.group_size is None:
            raise ValueError("granularity per_group needs group_size (the features of a token sharing one scale)")
        if self.calib_algo == "static_hist" and not (self.static and self.symmetric and self.granularity == "per_tensor"):
            raise ValueError("calib_algo static_hist calibrates a static symmetric per_tensor range (as llmc): set "
                             "static: true, symmetric: true, granularity: per_tensor")
        return self


class MixBitsSettingCfg(Section):
    """One `quant.mix_bits.setting_<i>`: linears by name (`down_proj`, or `down_proj#0-1-31` for those block
    indices) quantized with their own weight (and act) settings, or left in float with `do_quant: false`."""

    layer_name: list[str]
    do_quant: bool = True
    weight: WeightQuantCfg | None = None
    act: ActQuantCfg | None = None

    @field_validator("layer_name")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for item in v:
            name, _, blocks = item.partition("#")
            if not name or (blocks and not re.fullmatch(r"\d+(-\d+)*", blocks)):
                raise ValueError(f"layer_name '{item}' is neither a layer name nor name#i-j-k (block indices "
                                 "joined by '-')")
        return v

    @model_validator(mode="after")
    def _weight(self) -> "MixBitsSettingCfg":
        if self.do_quant and self.weight is None:
            raise ValueError("a setting with do_quant: true needs its weight settings")
        return self


def built_methods() -> list[str]:
    """The names of the quantization methods accbench has built."""
    return list(_quant_methods())


def _quant_methods() -> dict[str, Any]:
    """The method table (quant/methods.py): each method's code and options class. Imports torch."""
    from accbench.quant.methods import METHODS

    return METHODS


class KVCacheCfg(Section):
    """llmc's `quant.kvcache`: KV-cache quantization (quant/kvcache.py). llmc makes it static when
    quant.act.static is set, so it has no `static` key of its own."""

    method: Literal["Naive", "Kivi"]
    bit: int = Field(8, ge=2, le=16)
    symmetric: bool = True
    granularity: Literal["per_token", "per_tensor", "per_group"] = "per_token"
    group_size: int = Field(128, ge=1)
    residual_length: int = Field(128, ge=1)  # Kivi: tokens kept in full precision before they are quantized
    quant_type: Literal["int-quant"] = "int-quant"


class QuantCfg(Section):
    method: str
    weight: WeightQuantCfg = Field(default_factory=WeightQuantCfg)
    act: ActQuantCfg | None = None
    kvcache: KVCacheCfg | None = None
    special: dict[str, Any] = Field(default_factory=dict)
    quant_out: bool = False
    mix_bits: dict[str, MixBitsSettingCfg] | None = None  # llmc's per-layer bits (see quant/mixbits.py)

    @field_validator("mix_bits")
    @classmethod
    def _settings_in_order(cls, v: dict[str, MixBitsSettingCfg] | None) -> dict[str, MixBitsSettingCfg] | None:
        want = [f"setting_{i}" for i in range(len(v or {}))]
        if v is not None and sorted(v) != sorted(want):
            raise ValueError(f"mix_bits settings are named setting_0 .. setting_{len(v) - 1} (llmc reads them in that "
                             f"order); got {', '.join(v)}")
        return v

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

    @model_validator(mode="after")
    def _kv_static(self) -> "QuantCfg":
        kv = self.kvcache
        if kv is not None and self.act is not None and self.act.static and (kv.method != "Naive"
                                                                            or kv.granularity != "per_tensor"):
            raise ValueError("quant.act.static makes the KV cache static too (as in llmc), which needs "
                             "kvcache method Naive with granularity per_tensor (llmc's Kivi is dynamic only)")
        return self

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
    save_vllm: bool = False  # compressed-tensors real-quant checkpoint, <save_path>/vllm_quant_model
    save_sgl: bool = False  # the same checkpoint for SGLang, <save_path>/sgl_quant_model
    save_path: str | None = None

    def real_quant_exports(self) -> list[str]:
        """The real-quant export keys switched on (llmc's names)."""
        return [k for k, on in (("save_vllm", self.save_vllm), ("save_sgl", self.save_sgl)) if on]


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
