"""The base of every quantization method's options class (llmc's `quant.special` keys).

Each method declares its options next to its code (`GptqOptions` in gptq.py, ...): names, defaults and
valid values in one place. The config validates `quant.special` against the method's class (unknown keys,
bad values: errors naming the key); the method reads its typed options from the spec with `of(spec)`.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from typing import Self

    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.spec import QuantSpec


class MethodOptions(BaseModel):
    """A method's `quant.special` options; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def of(cls, spec: "QuantSpec") -> "Self":
        """The typed options of `spec` (its `special` mapping, defaults filled in for missing keys)."""
        return cls.model_validate(spec.special)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return cls().model_dump()

    def problems(self, weight: "WeightQuantSpec") -> list[str]:
        """Problems of these options together with the weight settings (none by default)."""
        return []

    def saved_state(self) -> dict[str, str | None]:
        """Which parts of the method's QuantState the run saves ("scales", "clips"), each to its folder (None:
        next to the saved models)."""
        return {}


def option_problems(method: str, options: type[MethodOptions], special: dict[str, Any]) -> list[str]:
    """Every problem of `special` as options of `method`: unknown keys (with the near match) and bad values."""
    try:
        options.model_validate(special)
    except ValidationError as exc:
        allowed = list(options.model_fields)
        out = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "extra_forbidden":
                near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                out.append(f"'{key}' is not an option of {method}" + (f" (did you mean '{near[0]}'?)" if near else ""))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                out.append(msg if msg.startswith("quant.special.") else f"quant.special.{key}: {msg}")
        if not allowed and out:
            out.append(f"{method} takes no special options")
        return out
    return []
