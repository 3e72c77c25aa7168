"""The `train` section: the dataset, the shared Trainer settings, the variants and their launcher."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from accbench.config_sections import EVAL_POSITIONS, Section, TextDataCfg


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
