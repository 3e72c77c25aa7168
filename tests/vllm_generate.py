"""Run by the vLLM test in a Python that has vLLM: load a checkpoint, print greedy token ids and prompt
log-probabilities as JSON (engine creation under __main__: vLLM's engine core runs in a spawned process)."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams

    path, dtype, prompt_ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    llm = LLM(model=path, dtype=dtype, max_model_len=128, enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0, max_tokens=8, prompt_logprobs=0)
    out = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params)
    print("RESULT " + json.dumps([{"tokens": list(o.outputs[0].token_ids),
                                   "prompt_logprobs": [None if lp is None else lp[t].logprob
                                                       for lp, t in zip(o.prompt_logprobs, p)]}
                                  for o, p in zip(out, prompt_ids)]))


if __name__ == "__main__":
    main()
