"""The typed run config: llmc-compatible YAML sections plus accbench's own, validated all at once.

One pydantic model per section. `load_config` reads YAML (anchors work), applies `key.path=value`
overrides, validates, and raises one `ConfigError` listing every problem with its YAML line, the
nearest valid key for a misspelling, and a clear "not supported yet" for llmc features we lack.
Only `pipeline.py` and `cli.py` read this object; building blocks take plain arguments.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from accbench.errors import ConfigError, ConfigProblem


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

    @field_validator("eval_pos", mode="before")
    @classmethod
    def _pos_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("eval_pos")
    @classmethod
    def _known_pos(cls, v: list[str]) -> list[str]:
        for p in v:
            if p in UNSUPPORTED_EVAL_POS:
                raise ValueError(f"eval_pos '{p}' is an llmc position accbench does not support yet")
            if p not in EVAL_POSITIONS:
                raise ValueError(f"unknown eval_pos '{p}'; valid: {', '.join(EVAL_POSITIONS)}")
        return v

    def fidelity_top_k(self) -> int | None:
        if isinstance(self.fidelity, FidelityCfg):
            return self.fidelity.top_k
        return 64 if (self.fidelity or self.eval_token_consist) else None


class WeightQuantCfg(Section):
    bit: int = Field(4, ge=2, le=8)
    symmetric: bool = False
    granularity: Literal["per_tensor", "per_channel", "per_group"] = "per_group"
    group_size: int = 128
    calib_algo: Literal["minmax", "mse"] = "minmax"
    int_range: list[int] | None = None

    @model_validator(mode="after")
    def _group(self) -> "WeightQuantCfg":
        if self.granularity == "per_group" and self.group_size <= 0:
            raise ValueError("granularity per_group needs a positive group_size")
        return self


class ActQuantCfg(Section):
    bit: int = Field(8, ge=2, le=8)
    symmetric: bool = True
    granularity: Literal["per_token", "per_tensor"] = "per_token"
    static: bool = False


QUANT_METHODS = ("RTN", "Awq", "GPTQ", "SmoothQuant")
# special keys each method accepts (llmc's names); a misspelling is an error with a suggestion
METHOD_SPECIAL_KEYS: dict[str, dict[str, Any]] = {
    "RTN": {},
    "Awq": {"trans": True, "trans_version": "v2", "weight_clip": False, "clip_sym": True,
            "n_grid": 20, "save_scale": False, "save_clip": False, "clip_version": "v1", "awq_bs": None},
    "GPTQ": {"actorder": False, "static_groups": False, "percdamp": 0.01, "blocksize": 128,
             "true_sequential": True, "owq": False},
    "SmoothQuant": {"alpha": 0.5},
}
_METHOD_ALIASES = {m.lower(): m for m in QUANT_METHODS} | {"quarot": None, "omniquant": None,
                                                           "spqr": None, "hqq": None, "osplus": None,
                                                           "quip": None, "tesseraq": None}


class QuantCfg(Section):
    method: str
    weight: WeightQuantCfg = Field(default_factory=WeightQuantCfg)
    act: ActQuantCfg | None = None
    special: dict[str, Any] = Field(default_factory=dict)
    quant_out: bool = False

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        canon = _METHOD_ALIASES.get(v.lower(), "?")
        if canon is None:
            raise ValueError(f"quant method '{v}' is an llmc method accbench does not support yet "
                             f"(supported: {', '.join(QUANT_METHODS)})")
        if canon == "?":
            raise ValueError(f"unknown quant method '{v}'{_suggest(v, QUANT_METHODS)}; "
                             f"supported: {', '.join(QUANT_METHODS)}")
        return canon

    @field_validator("special")
    @classmethod
    def _special_keys(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is None:
            return v
        allowed = METHOD_SPECIAL_KEYS[method]
        bad = [k for k in v if k not in allowed]
        if bad:
            msgs = [f"'{k}' is not an option of {method}{_suggest(k, allowed)}" for k in bad]
            if not allowed:
                msgs.append(f"{method} takes no special options")
            raise ValueError("; ".join(msgs))
        return v

    def special_with_defaults(self) -> dict[str, Any]:
        return {**METHOD_SPECIAL_KEYS[self.method], **self.special}


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


class RunnerCfg(Section):
    type: Literal["local", "ray"] = "local"
    max_num_workers: int = Field(1, ge=1)
    num_gpus: int = Field(1, ge=0)
    address: str | None = None


class TaskBase(Section):
    name: str
    path: str | None = None
    # a count, or as on lm-eval's --limit a fraction (0 < limit < 1) of the documents
    limit: int | float | None = Field(None, gt=0)
    num_fewshot: int = Field(0, ge=0)
    seed: int = 1234
    batch_size: int | Literal["auto"] = "auto"
    chat_template: bool = False


    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | float | None) -> int | float | None:
        if isinstance(v, float) and v >= 1:
            if not v.is_integer():
                raise ValueError(f"limit {v}: a count must be a whole number; a fraction must be below 1")
            return int(v)
        return v


class MultipleChoiceTask(TaskBase):
    type: Literal["multiple_choice"]
    context_field: str = "context"
    choices_field: str = "choices"
    label_field: str = "label"
    target_delimiter: str = " "


class GenerateTask(TaskBase):
    type: Literal["generate"]
    prompt_field: str = "prompt"
    target_field: str = "target"
    metric: Literal["exact_match", "contains", "regex"] = "exact_match"
    regex: str | None = None
    ignore_case: bool = False
    ignore_punctuation: bool = False
    strip: bool = True
    stop: list[str] = Field(default_factory=lambda: ["\n\n"])
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)


class PerplexityTask(TaskBase):
    type: Literal["perplexity"]
    seq_len: int = Field(2048, ge=8)
    bs: int = Field(1, ge=1)


class LmEvalTask(TaskBase):
    type: Literal["lm_eval"]
    task: str | None = None  # lm-eval task name; default: name
    include_path: str | None = None


class HumanEvalTask(TaskBase):
    type: Literal["humaneval"]
    n_samples: int = Field(1, ge=1)
    k: list[int] = Field(default_factory=lambda: [1])
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    allow_code_execution: bool = False
    timeout: float = Field(10.0, gt=0)
    workers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _k(self) -> "HumanEvalTask":
        too_big = [k for k in self.k if k > self.n_samples]
        if too_big:
            raise ValueError(f"k={too_big} exceeds n_samples={self.n_samples}; pass@k needs n_samples >= k")
        return self


class JudgeCfg(Section):
    type: Literal["openai", "hf"] = "openai"
    model: str | None = None
    path: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    parse_retries: int = Field(0, ge=0)  # extra asks after a reply with no rating; FastChat asks once (0)
    max_tokens: int = Field(2048, ge=1)  # the judge's reply length (FastChat: 2048)
    prompts: Literal["fastchat", "accbench"] = "fastchat"  # whose judge prompts and rating rule
    prompt_file: str | None = None  # FastChat's judge_prompts.jsonl (needed with prompts: fastchat)

    @model_validator(mode="after")
    def _needs(self) -> "JudgeCfg":
        if self.type == "openai" and not self.model:
            raise ValueError("an openai judge needs judge.model (e.g. gpt-4o)")
        if self.type == "hf" and not self.path:
            raise ValueError("an hf judge needs judge.path (a local judge model directory)")
        if self.prompts == "fastchat" and not self.prompt_file:
            raise ValueError("judge.prompts: fastchat (the default) needs judge.prompt_file, the path to FastChat's "
                             "judge_prompts.jsonl (fastchat/llm_judge/data/judge_prompts.jsonl in "
                             "https://github.com/lm-sys/FastChat; see docs/mtbench.md), or set judge.prompts: "
                             "accbench for accbench's own prompts (scores then not comparable with FastChat's)")
        return self


class MTBenchTask(TaskBase):
    type: Literal["mtbench"]
    questions: str = "builtin:sample"  # FastChat question.jsonl, or builtin:sample
    reference_answers: str | None = None
    judge: JudgeCfg  # required: who grades the answers
    max_new_tokens: int = Field(1024, ge=1)
    max_judge_failures: int | None = Field(None, ge=0)  # None: any number, each one listed (as FastChat)
    chat_template_override: str | None = None
    conv_template: str | None = None  # a FastChat conversation template by name (one_shot, vicuna_v1.1, ...)
    # sampled categories: what Hugging Face generate adds to FastChat's temperature (its defaults; set your model's
    # generation_config.json values, e.g. top_p 0.9, to match FastChat on that model)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    pairwise: bool = False  # also judge each model against the baseline's answers (FastChat's pair-v2)

    @model_validator(mode="after")
    def _questions_not_path(self) -> "MTBenchTask":
        if self.path is not None:
            raise ValueError("an mtbench task reads its questions from `questions:` (FastChat's question.jsonl), "
                             "not `path:`")
        if self.conv_template and self.chat_template_override:
            raise ValueError("set conv_template (a FastChat template by name) or chat_template_override (Jinja), "
                             "not both")
        if self.pairwise and not self.judge.prompt_file:
            raise ValueError("pairwise: true judges with FastChat's pair prompts: set judge.prompt_file to FastChat's "
                             "judge_prompts.jsonl (see docs/mtbench.md)")
        return self


TaskCfg = Annotated[
    Union[MultipleChoiceTask, GenerateTask, PerplexityTask, LmEvalTask, HumanEvalTask, MTBenchTask],
    Field(discriminator="type"),
]


class VariantCfg(Section):
    """One way to train: built-in Trainer options, or the user's own `command` (see docs/training.md)."""

    torch_compile: bool = False
    bf16: bool = False
    fp16: bool = False
    optim: str | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    command: str | None = None  # placeholders: {model} {output_dir} {seed} {train_file}
    env: dict[str, str] = Field(default_factory=dict)
    trainer_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "VariantCfg":
        if self.bf16 and self.fp16:
            raise ValueError("a variant trains in bf16 or fp16, not both")
        if self.command is not None:
            builtin = [k for k in ("torch_compile", "bf16", "fp16", "optim", "gradient_checkpointing",
                                   "attn_implementation", "trainer_args") if getattr(self, k)]
            if builtin:
                raise ValueError(f"a command variant runs the user's own script, so {builtin} would be ignored; "
                                 "pass such options in the command itself (only env applies to a command)")
            if not self.command.strip():
                raise ValueError("command is empty")
        return self


class LauncherCfg(Section):
    type: Literal["none", "torchrun"] = "none"
    nproc_per_node: int = Field(1, ge=1)
    extra_args: list[str] = Field(default_factory=list)  # more torchrun flags, e.g. ["--master_port", "29511"]


class TrainCfg(Section):
    dataset: TextDataCfg
    block_size: int = Field(1024, ge=8)
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(5e-5, gt=0)
    seed: int = 42
    variants: dict[str, VariantCfg] = Field(default_factory=lambda: {"native": VariantCfg()})
    launcher: LauncherCfg = Field(default_factory=LauncherCfg)
    trainer_args: dict[str, Any] = Field(default_factory=dict)
    save_checkpoints: bool = True

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantCfg]) -> dict[str, VariantCfg]:
        if not v:
            raise ValueError("train.variants is empty; add at least the baseline, e.g. native: {}")
        for name in v:
            # a variant's name is its model position in results.json; the original model is 'pretrain'
            if name in EVAL_POSITIONS or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variant name '{name}' is reserved or not a plain name; use letters, digits, "
                                 f"'_' or '-', and none of {', '.join(EVAL_POSITIONS)}")
        return v


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


class RunConfig(Section):
    base: BaseCfg = Field(default_factory=BaseCfg)
    model: ModelCfg
    calib: CalibCfg | None = None
    eval: list[EvalCfg] = Field(default_factory=list)
    quant: QuantCfg | None = None
    save: SaveCfg = Field(default_factory=SaveCfg)
    opencompass: OpenCompassCfg | None = None
    train: TrainCfg | None = None
    tasks: list[TaskCfg] = Field(default_factory=list)
    runner: RunnerCfg = Field(default_factory=RunnerCfg)
    compare: CompareCfg = Field(default_factory=CompareCfg)

    @field_validator("eval", mode="before")
    @classmethod
    def _eval_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _cross_section(self) -> "RunConfig":
        problems = []
        needs_quant = {p for e in self.eval for p in e.eval_pos if p in ("transformed", "fake_quant")}
        if needs_quant and self.quant is None:
            problems.append(f"eval_pos {sorted(needs_quant)} needs a quant section (or evaluate only 'pretrain')")
        if self.quant is not None and self.quant.method != "RTN" and self.calib is None:
            problems.append(f"quant method {self.quant.method} needs calibration data: add a calib section")
        if self.quant is not None and self.train is not None:
            problems.append("a run either quantizes (quant) or trains (train), not both")
        if self.opencompass is not None and not (self.save.save_trans or self.save.save_fake):
            problems.append("the opencompass section evaluates a saved model: set save.save_trans: true "
                            "(transformed model) or save.save_fake: true (fake-quantized model)")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"task names must be unique; repeated: {dup}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def positions(self) -> list[str]:
        """Model positions evaluated in this run, in pipeline order."""
        seen = {p for e in self.eval for p in e.eval_pos}
        if not seen:
            seen = {"pretrain"}
        return [p for p in EVAL_POSITIONS if p in seen]


# ----------------------------------------------------------------------------- loading

# llmc keys we know but do not implement yet: a clear "not supported yet" instead of "unknown key"
UNSUPPORTED_LLMC_KEYS = {
    "quant.kvcache": "KV-cache quantization",
    "quant.quant_objects": "non-language quant objects",
    "save.save_lightllm": "saving for LightLLM",
    "save.save_vllm": "saving for vLLM",
    "save.save_sgl": "saving for SGLang",
    "save.save_autoawq": "saving in AutoAWQ format",
    "save.save_mlcllm": "saving for MLC-LLM",
    "save.tp_size": "tensor-parallel export",
    "sparse": "sparsification",
    "token_reduction": "token reduction",
    "model.use_cpu_to_save_cuda_mem_for_catcher": "llmc's catcher offload (blockwise calibration keeps blocks on CPU)",
}
UNSUPPORTED_EVAL_POS = {"fake_quant_wo_kv", "transformed_wo_kv", "pretrain_wo_kv"}


def _suggest(word: str, options: Any) -> str:
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _line_map(text: str) -> dict[tuple, int]:
    """Map key paths (tuples of str/int) to 1-based YAML line numbers."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (k.value,)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], typed value); the value is parsed as YAML (1 -> int, true -> bool)."""
    if "=" not in item:
        raise ConfigError([ConfigProblem("", f"override '{item}' is not of the form key.path=value")])
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for i, k in enumerate(keys[:-1]):
            nxt = keys[i + 1]
            if isinstance(node, list):
                node = node[int(k)]
                continue
            if k not in node or node[k] is None:
                node[k] = [] if nxt.isdigit() else {}
            node = node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _known_unsupported(data: dict) -> list[tuple[tuple, str]]:
    found = []
    for dotted, what in UNSUPPORTED_LLMC_KEYS.items():
        node: Any = data
        parts = dotted.split(".")
        for p in parts:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            if node not in (False, None):
                found.append((tuple(parts), what))
    return found


def _drop_path(data: dict, path: tuple) -> None:
    node = data
    for p in path[:-1]:
        node = node[p]
    node.pop(path[-1], None)


def validate_config(data: Any, source: str | None = None, text: str | None = None) -> RunConfig:
    """Validate a raw mapping into a RunConfig, collecting every problem into one ConfigError."""
    lines = _line_map(text) if text else {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", "the config must be a YAML mapping of sections", 1, source)])
    problems: list[ConfigProblem] = []
    data = dict(data)
    for path, what in _known_unsupported(data):
        problems.append(ConfigProblem(".".join(path), f"{what} is an llmc feature accbench does not support yet; "
                                      "remove this key", lines.get(path), source))
        _drop_path(data, path)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _TASK_TYPES))
            problems.append(_problem_from_error(err, loc, lines, source))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


_TASK_MODELS = {"multiple_choice": MultipleChoiceTask, "generate": GenerateTask, "perplexity": PerplexityTask,
                "lm_eval": LmEvalTask, "humaneval": HumanEvalTask, "mtbench": MTBenchTask}
_TASK_TYPES = set(_TASK_MODELS)


def _problem_from_error(err: dict, loc: tuple, lines: dict, source: str | None) -> ConfigProblem:
    # `eval` may be one mapping in YAML but a list after validation: then name it without the index
    if len(loc) > 1 and loc[0] == "eval" and isinstance(loc[1], int) and ("eval", 0) not in lines:
        loc = ("eval",) + loc[2:]
    dotted = ".".join(str(p) for p in loc)
    line = None
    for n in range(len(loc), 0, -1):
        line = lines.get(loc[:n])
        if line:
            break
    if err["type"] == "extra_forbidden":
        parent = _model_at(tuple(p for p in err["loc"][:-1]))
        fields = list(parent.model_fields) if parent else []
        hint = _suggest(loc[-1], fields)
        return ConfigProblem(dotted, f"unknown key '{loc[-1]}'{hint}", line, source)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown task type; valid types: {', '.join(sorted(_TASK_TYPES))}"
    elif err["type"] == "union_tag_not_found":
        msg = f"a task needs a 'type': one of {', '.join(sorted(_TASK_TYPES))}"
    return ConfigProblem(dotted, msg, line, source)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at a location, to suggest near matches."""
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if part in _TASK_TYPES:  # the discriminator tag pydantic puts in the location
            model = _TASK_MODELS[part]
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        ann = field.annotation
        model = _first_model(ann)
    return model


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config; every problem is reported at once."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([ConfigProblem("", f"config file not found: {p}")])
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigProblem("", f"not valid YAML: {getattr(exc, 'problem', exc)}", line, str(p))]) from None
    if data is None:
        data = {}
    if isinstance(data, dict) and overrides:
        data = apply_overrides(data, overrides)
    return validate_config(data, str(p), text)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)


def eval_config(model: str, tasks: str | None, config: str | None, dtype: str = "auto", device: str | None = None,
                overrides: list[str] | None = None, task_options: dict[str, Any] | None = None,
                model_options: dict[str, Any] | None = None, include_path: str | None = None) -> RunConfig:
    """The run config of `accbench eval`: one model, the named tasks. A name the config defines is that task;
    any other name is an lm-eval task or group (from lm-eval's registry, or `include_path`'s YAMLs), as on
    lm-eval's command line. `task_options` (limit, num_fewshot, batch_size, chat_template) apply to every task."""
    data: dict[str, Any] = {}
    if config:
        p = Path(config)
        if not p.is_file():
            raise ConfigError([ConfigProblem("", f"config file not found: {p}")])
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([ConfigProblem("", f"not valid YAML: {exc}", None, str(p))]) from None
        if not isinstance(data, dict):
            raise ConfigError([ConfigProblem("", "expected a mapping with a tasks list", 1, str(p))])
    all_tasks = data.get("tasks") or []
    if not isinstance(all_tasks, list):
        raise ConfigError([ConfigProblem("tasks", "must be a list of tasks", None, config)])
    if tasks:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        defined = {t.get("name"): t for t in all_tasks if isinstance(t, dict)}
        all_tasks = [dict(defined[n]) if n in defined else
                     {"name": n, "type": "lm_eval", **({"include_path": include_path} if include_path else {})}
                     for n in names]
    if not all_tasks:
        raise ConfigError([ConfigProblem("tasks", "no tasks to evaluate: pass --tasks (lm-eval task names, or names "
                                         "from --config) or --config with a tasks list", None, config)])
    for t in all_tasks:
        if isinstance(t, dict):
            t.update(task_options or {})
            if include_path and t.get("type") == "lm_eval":
                t.setdefault("include_path", include_path)
    model_section = {"path": model, "torch_dtype": dtype, **({"device": device} if device else {})}
    model_section.update(model_options or {})
    run: dict[str, Any] = {"model": model_section, "tasks": all_tasks}
    for key in ("runner", "base"):
        if key in data:
            run[key] = data[key]
    if overrides:
        run = apply_overrides(run, overrides)
    return validate_config(run, config)
