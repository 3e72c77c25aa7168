"""The `tasks` section: one config class per task type (the `type` key picks it)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from accbench.config_sections import Engine, Section


class TaskBase(Section):
    name: str
    path: str | None = None
    # a count, or as on lm-eval's --limit a fraction (0 < limit < 1) of the documents
    limit: int | float | None = Field(None, gt=0)
    num_fewshot: int = Field(0, ge=0)
    seed: int = 1234
    batch_size: int | Literal["auto"] = "auto"
    chat_template: bool = False
    eval_pos: list[str] | None = None  # the quantization positions it runs at; default: every evaluated one
    engine: Engine | None = None  # hf | vllm; None: runner.engine

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
    allow_beyond_max_positions: bool = False


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


class CustomGenerateTask(TaskBase):
    """llmc's `eval.type: generate_only` (its CustomGenerate): greedy answers to llmc's custom samples
    (`path`/samples.json), `max_new_tokens` each, no score; with `chat_template` the question goes in llmc's
    system + user turns."""

    type: Literal["generate_only"]
    max_new_tokens: int = Field(32, ge=1)
    system_prompt: str = "You are a helpful assistant."


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
    Union[MultipleChoiceTask, GenerateTask, PerplexityTask, LmEvalTask, HumanEvalTask, MTBenchTask,
          CustomGenerateTask],
    Field(discriminator="type"),
]


TASK_MODELS = {"multiple_choice": MultipleChoiceTask, "generate": GenerateTask, "perplexity": PerplexityTask,
               "lm_eval": LmEvalTask, "humaneval": HumanEvalTask, "mtbench": MTBenchTask,
               "generate_only": CustomGenerateTask}
