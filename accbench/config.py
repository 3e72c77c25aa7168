"""The typed run config: llmc-compatible YAML sections plus accbench's own, validated all at once.

One pydantic model per section (config_sections.py, config_tasks.py, config_train.py); `RunConfig` here
holds them. `load_config` reads YAML (anchors work), applies `key.path=value`
overrides, validates, and raises one `ConfigError` listing every problem with its YAML line, the
nearest valid key for a misspelling, and a clear "not supported yet" for llmc features we lack.
Only the pipeline's spine and `cli.py` read this object; stages take their section, building blocks plain
arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from accbench.config_sections import (EVAL_POSITIONS, ActQuantCfg, BaseCfg, CalibCfg, CompareCfg,
                                      EvalCfg, FidelityCfg, GateCfg, IgnoredLayersCfg, ModelCfg, OpenCompassCfg, QuantCfg, RunnerCfg,
                                      SaveCfg, Section, TextDataCfg, WeightQuantCfg, suggest)
from accbench.config_tasks import (TASK_MODELS, GenerateTask, HumanEvalTask, JudgeCfg, LmEvalTask, MTBenchTask,
                                   MultipleChoiceTask, PerplexityTask, TaskBase, TaskCfg)
from accbench.config_gates import compare_problems
from accbench.config_sparse import SparseCfg
from accbench.config_train import LauncherCfg, TrainCfg, VariantCfg
from accbench.config_load import UniqueKeyLoader, apply_overrides, parse_override, read_utf8_config
from accbench.errors import ConfigError, ConfigProblem

__all__ = ["EVAL_POSITIONS", "ActQuantCfg", "BaseCfg", "CalibCfg", "CompareCfg", "EvalCfg",
           "FidelityCfg", "GateCfg", "IgnoredLayersCfg", "GenerateTask", "HumanEvalTask", "JudgeCfg", "LauncherCfg", "LmEvalTask",
           "MTBenchTask", "ModelCfg", "MultipleChoiceTask", "OpenCompassCfg", "PerplexityTask", "QuantCfg",
           "RunConfig", "RunnerCfg", "SaveCfg", "Section", "SparseCfg", "TaskBase", "TaskCfg", "TextDataCfg", "TrainCfg",
           "VariantCfg", "WeightQuantCfg", "apply_overrides", "dump_config", "eval_config", "load_config",
           "parse_override", "validate_config"]


class RunConfig(Section):
    base: BaseCfg = Field(default_factory=BaseCfg)
    model: ModelCfg
    calib: CalibCfg | None = None
    eval: list[EvalCfg] = Field(default_factory=list)
    quant: QuantCfg | None = None
    sparse: SparseCfg | None = None
    ignored_layers: IgnoredLayersCfg | None = None
    save: SaveCfg = Field(default_factory=SaveCfg)
    opencompass: OpenCompassCfg | None = None
    train: TrainCfg | None = None
    tasks: list[TaskCfg] = Field(default_factory=list)
    runner: RunnerCfg = Field(default_factory=RunnerCfg)
    compare: CompareCfg = Field(default_factory=CompareCfg)

    @model_validator(mode="before")
    @classmethod
    def _llmc_generate_evals(cls, data: Any) -> Any:
        """llmc's `eval.type: generate_only` blocks run as generate_only tasks (llmc_evals.py)."""
        from accbench.llmc_evals import move_generate_evals

        return move_generate_evals(data) if isinstance(data, dict) else data

    @field_validator("eval", mode="before")
    @classmethod
    def _eval_list(cls, v: Any) -> Any:
        """One entry per dataset: llmc's `name: [wikitext2, c4]` evaluates each, from `path/<name>` when the
        list has more than one name (from `path` itself when one)."""
        entries = [v] if isinstance(v, dict) else v
        if not isinstance(entries, list):
            return v
        out = []
        for e in entries:
            names = e.get("name") if isinstance(e, dict) else None
            if not isinstance(names, list):
                out.append(e)
                continue
            for n in names:
                path = e.get("path")
                joined = str(Path(path) / str(n)) if path and len(names) > 1 else path
                out.append({**e, "name": n, **({"path": joined} if path else {})})
        return out

    @model_validator(mode="after")
    def _real_quant_position(self) -> "RunConfig":
        """An exported real-quant checkpoint is evaluated wherever fake_quant is (real_quant beside fake_quant)."""
        if self.quant is not None and self.save.real_quant_exports():
            for e in self.eval:
                if "fake_quant" in e.eval_pos and "real_quant" not in e.eval_pos:
                    e.eval_pos.append("real_quant")
        return self

    @model_validator(mode="after")
    def _cross_section(self) -> "RunConfig":
        if self.calib is not None and "seed" not in self.calib.model_fields_set:
            self.calib.seed = self.base.seed  # llmc draws calibration samples from the generator base.seed seeds
        if "seed" in self.base.model_fields_set:  # a set base.seed seeds the tasks' sampling too (else lm-eval's 1234)
            for t in self.tasks:
                if "seed" not in t.model_fields_set:
                    t.seed = self.base.seed
        problems = []
        needs_quant = {p for e in self.eval for p in e.eval_pos
                       if p in ("fake_quant", "fake_quant_wo_kv", "real_quant") or (p == "transformed" and self.sparse is None)}
        if (self.save.real_quant_exports() or "real_quant" in needs_quant) and self.quant is None:
            what = f"save.{self.save.real_quant_exports()[0]}" if self.save.real_quant_exports() else "eval_pos real_quant"
            problems.append(f"{what} needs a quantized model to export: add a quant section")
        if needs_quant and self.quant is None and self.sparse is None:
            problems.append(f"eval_pos {sorted(needs_quant)} needs a quant section (or evaluate only 'pretrain')")
        problems += self._sparse_problems() + self._kvcache_task_problems()
        if self.quant is not None and self.calib is None and _needs_calibration(self.quant):
            problems.append(f"quant method {self.quant.method} needs calibration data: add a calib section")
        bad_pos = sorted({p for t in self.tasks for p in t.eval_pos or [] if p not in EVAL_POSITIONS})
        if bad_pos:
            problems.append(f"task eval_pos {bad_pos}: valid positions are {', '.join(EVAL_POSITIONS)}")
        if self.train is not None and any(t.eval_pos is not None for t in self.tasks):
            problems.append("a task's eval_pos picks quantization positions; a training run evaluates every "
                            "task on every variant (remove eval_pos)")
        if self.quant is not None and self.train is not None:
            problems.append("a run either quantizes (quant) or trains (train), not both")
        if self.opencompass is not None and not (self.save.save_trans or self.save.save_fake):
            problems.append("the opencompass section evaluates a saved model: set save.save_trans: true "
                            "(transformed model) or save.save_fake: true (fake-quantized model)")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"task names must be unique; repeated: {dup}")
        problems += compare_problems(self.compare, self.tasks, self.eval,
                                     ["pretrain", *self.train.variants] if self.train is not None else self.positions())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tasks_at(self, position: str) -> list[TaskCfg]:
        """The tasks evaluated at `position`: those without eval_pos everywhere, the others where they say."""
        return [t for t in self.tasks if t.eval_pos is None or position in t.eval_pos]

    def _kvcache_task_problems(self) -> list[str]:
        """quant.kvcache is applied to the tasks at fake_quant by the in-process HF backend only."""
        at = self.tasks_at("fake_quant") if self.quant is not None and self.quant.kvcache is not None else []
        out = []
        vllm = [t.name for t in at if (t.engine or self.runner.engine) == "vllm"]
        if vllm:
            out.append(f"tasks {vllm} at fake_quant use engine vllm, which cannot apply quant.kvcache (accbench's "
                       "KV-cache quantizer runs in the HF backend): set engine: hf for them, or give them "
                       "eval_pos without fake_quant (fake_quant_wo_kv evaluates the model without it)")
        if at and (self.runner.type != "local" or self.runner.max_num_workers > 1):
            out.append("runner worker replicas cannot apply quant.kvcache to the tasks at fake_quant: set "
                       "runner.max_num_workers: 1 (and runner.type: local)")
        return out

    def _sparse_problems(self) -> list[str]:
        if self.sparse is None:
            return []
        out = []
        if self.quant is not None:
            out.append("a run either quantizes (quant) or sparsifies (sparse), not both: run them as two steps "
                       "(save.save_trans: true, then the next run's model.path names save_path/transformed_model)")
        if self.train is not None:
            out.append("a run either sparsifies (sparse) or trains (train), not both")
        if any("fake_quant" in e.eval_pos for e in self.eval) and self.quant is None:
            out.append("eval_pos fake_quant is a quantized model; a sparse run has pretrain and transformed "
                       "(the sparsified model)")
        if self.sparse.needs_calibration() and self.calib is None:
            out.append(f"sparse method {self.sparse.method} needs calibration data: add a calib section")
        return out

    def window_lengths(self) -> list[tuple[str, int, bool]]:
        """(key, seq_len, allowed beyond the model's positions) of every perplexity window this run uses."""
        out = [(f"eval.{i}.seq_len", e.seq_len, e.allow_beyond_max_positions) for i, e in enumerate(self.eval)
               if e.type != "decode_ppl"]  # decode_ppl decodes whole samples; it has no windows
        out += [(f"tasks.{i}.seq_len", t.seq_len, t.allow_beyond_max_positions)
                for i, t in enumerate(self.tasks) if isinstance(t, PerplexityTask)]
        return out

    def positions(self) -> list[str]:
        """Model positions evaluated in this run, in pipeline order."""
        seen = {p for e in self.eval for p in e.eval_pos} | {p for t in self.tasks for p in t.eval_pos or []}
        if not seen:
            seen = {"pretrain"}
        return [p for p in EVAL_POSITIONS if p in seen]


# ----------------------------------------------------------------------------- loading

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


def validate_config(data: Any, source: str | None = None, text: str | None = None) -> RunConfig:
    """Validate a raw mapping into a RunConfig, collecting every problem into one ConfigError."""
    lines = _line_map(text) if text else {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", "the config must be a YAML mapping of sections", 1, source)])
    from accbench.config_sections import built_methods
    from accbench.llmc_features import llmc_problems

    problems, data = llmc_problems(data, built_methods(), lines, source)
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


_TASK_TYPES = set(TASK_MODELS)


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
        hint = suggest(loc[-1], fields)
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
            model = TASK_MODELS[part]
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
    text = read_utf8_config(p)
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
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
            data = yaml.load(read_utf8_config(p), Loader=UniqueKeyLoader) or {}
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


def _needs_calibration(q: QuantCfg) -> bool:
    """Whether the method calibrates (the method table says; RTN, QuaRot and LLM.int8() do not)."""
    from accbench.quant.methods import needs_calibration

    return needs_calibration(q.method, q.act is not None and q.act.static)
