"""accbench's engine behind lm-eval's `LM` interface, so any lm-eval task runs in-process on the
in-memory model (fake-quant weights included) with lm-eval's own prompts, metrics and aggregation.

lm-eval is the optional extra `lm_eval`; it is imported only when this adapter is built.
"""

from __future__ import annotations

from typing import Any

from accbench.errors import AccbenchError
from accbench.evaluate.requests import Answerer, GenerateRequest, RollingRequest, ScoreRequest


def import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise AccbenchError("lm-eval tasks need the lm-eval package, which is not installed",
                            "pip install 'accbench[lm_eval]'  (or: pip install lm-eval)") from None
    return lm_eval


def generate_request(context: str, gen_kwargs: dict[str, Any], default_max: int = 256,
                     sample_id: str = "") -> GenerateRequest:
    """lm-eval's generate_until arguments as a GenerateRequest (sampling only when do_sample is set)."""
    until = gen_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    sample = bool(gen_kwargs.get("do_sample", False))
    temperature = float(gen_kwargs.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0
    return GenerateRequest(context, int(gen_kwargs.get("max_gen_toks", default_max)), until, temperature,
                           float(gen_kwargs.get("top_p", 1.0) or 1.0), int(gen_kwargs.get("seed", 0) or 0),
                           sample_id=sample_id)


def _sample_id(instance: Any) -> str:
    """`<lm-eval task>/<doc_id>` of an lm-eval request (Instance), as the per-sample store records it."""
    return f"{instance.task_name}/{instance.doc_id}"


def make_lm(answerer: Answerer, chat_tokenizer: Any = None) -> Any:
    """An `lm_eval.api.model.LM` whose three request kinds are answered by `answerer` (a model backend, or the
    per-sample store in front of one); with `chat_tokenizer`, lm-eval's --apply_chat_template renders prompts
    with that tokenizer's template."""
    import_lm_eval()
    from lm_eval.api.model import LM

    class AccbenchLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self.answerer = answerer

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return self.answerer.score([ScoreRequest(*r.args, sample_id=_sample_id(r)) for r in requests])

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            return self.answerer.score_rolling([RollingRequest(r.args[0], _sample_id(r)) for r in requests])

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            return self.answerer.generate([generate_request(*r.args, sample_id=_sample_id(r)) for r in requests])

        @property
        def tokenizer_name(self) -> str:
            tok = self.answerer.tokenizer
            return (tok.name_or_path if tok is not None else "accbench").replace("/", "__")

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return getattr(chat_tokenizer, "chat_template", None) if chat_template else None

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            # as lm-eval's HFLM: a prefilled assistant turn is continued, not closed
            return chat_tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=not add_generation_prompt)

    return AccbenchLM()
