"""The vLLM backend (`ModelBackend`, backends/base.py): answers score, score_rolling, generate and perplexity
windows with vLLM's offline engine (`vllm.LLM`, in-process, no server), on the position's weights on disk.

Every request is tokenized here by lm-eval's rules (tokens.py, the same as the HF backend) and handed to vLLM
as token ids, so both engines see the same tokens:
- score: the prompt is context + continuation without its last token; the continuation's tokens but the last
  are read from vLLM's prompt log-probabilities, the last one is "generated" with `allowed_token_ids` pinned to
  it and its raw log-probability read back (vLLM reports raw log-probabilities, taken before any logits
  processing). So a window of max_length + 1 tokens (context cut as lm-eval's HFLM cuts it) fits the engine's
  max_length, and greediness is vLLM's rank 1 at every continuation position;
- score_rolling: lm-eval's disjoint windows, each scored as above;
- generate: vLLM's batched sampling with the request's own seed (sampled answers do not depend on the batch,
  but they are not the HF backend's samples: the two engines draw differently); greedy in float32 equals the
  HF backend's. Text is decoded by our tokenizer and cut at the first stop string, as the HF backend does;
- window_losses: each perplexity window's mean loss from prompt log-probabilities (llmc's recipe).

vLLM is imported lazily (the `vllm` extra). Its engine core runs in a spawned process, so the program that
creates a backend must be spawn-safe (`if __name__ == "__main__":`); on CPU the KV cache gets 1 GiB unless
VLLM_CPU_KVCACHE_SPACE says otherwise. vLLM batches by itself: batch-size settings do not apply.
On CPU, tensor parallelism (`gpus` > 1) runs one process per rank, each bound to its own cores (`cpu_binds`:
vLLM's automatic binding wants one NUMA node per rank, which a small machine lacks).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from accbench.errors import AccbenchError, DataError, ModelLoadError
from accbench.evaluate.backends.base import BackendStats, BatchSize, ModelBackend
from accbench.evaluate.backends.tokens import LmEvalTokens, Tokens
from accbench.evaluate.requests import (GenerateRequest, Request, RollingRequest, ScoreRequest, WindowLossRequest,
                                        cut_at_stop)

if TYPE_CHECKING:
    from accbench.models import LoadedModel

log = logging.getLogger("accbench.engine")

VLLM_HINT = ("install the vllm extra (pip install 'accbench[vllm]' on a CUDA machine; on CPU vLLM's CPU build: "
             "bash .ci/vllm_env.sh builds a virtual environment with it), or set engine: hf (docs/vllm.md)")
CPU_KVCACHE_GIB = "1"
OMP_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"  # vLLM's CPU thread binding: "0-3|4-7" = rank 0 on 0-3, rank 1 on 4-7


@dataclass(frozen=True)
class VLLMSettings:
    """How to start one vLLM engine: the weights on disk and how they are spread."""

    model_path: str
    dtype: str = "auto"  # "float32", "bfloat16", "float16" or "auto" (the checkpoint's)
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # the engine's window: the model's + 1 (see VLLMBackend.__init__)
    tokenizer_path: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    gpu_memory_utilization: float | None = None  # None: 90% of what is free on the GPU when the engine starts

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `vllm.LLM` for these settings."""
        kw: dict[str, Any] = dict(model=self.model_path, tokenizer=self.tokenizer_path or self.model_path,
                                  dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                                  trust_remote_code=self.trust_remote_code, seed=self.seed,
                                  enable_prefix_caching=True)
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        if self.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization
        return kw


def check_vllm_installed() -> None:
    """Preflight: the vllm package is there (without importing it: that takes seconds); AccbenchError if not."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise AccbenchError("engine: vllm needs the vllm package, which is not installed in this Python "
                            "environment", VLLM_HINT)


def import_vllm() -> Any:
    """The vllm module, or an AccbenchError (exit 2) saying why vLLM cannot run here and what to do."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError as exc:
        raise AccbenchError(f"engine: vllm needs the vllm package, which cannot be imported here ({exc})",
                            VLLM_HINT) from None
    if current_platform.is_unspecified():
        raise AccbenchError("engine: vllm found no device it supports on this machine (no CUDA/ROCm GPU, and this "
                            "vllm build is not the CPU one)", VLLM_HINT)
    return vllm


def cpu_binds(cores: Sequence[int], replicas: int, tp: int) -> list[str]:
    """vLLM's CPU thread binding (OMP_BIND_ENV) for each of `replicas` engines of `tp` tensor-parallel ranks:
    the cores split evenly between the ranks, each rank its own run of them ("0|1": rank 0 on core 0, rank 1
    on core 1). With fewer cores than ranks, the ranks share cores round-robin (it runs, slower; warned)."""
    cores, ranks = sorted(cores), replicas * tp
    if len(cores) >= ranks:
        per = len(cores) // ranks
        groups = [cores[k * per : (k + 1) * per] for k in range(ranks)]
    else:
        log.warning("%d vLLM engine(s) x %d tensor-parallel rank(s) on %d CPU core(s): ranks share cores",
                    replicas, tp, len(cores))
        groups = [[cores[k % len(cores)]] for k in range(ranks)]
    return ["|".join(",".join(map(str, g)) for g in groups[i * tp : (i + 1) * tp]) for i in range(replicas)]


def dtype_name(model: Any) -> str:
    """The dtype the in-memory model runs in, as vLLM names it (so vLLM loads the saved weights unchanged)."""
    return str(getattr(model, "dtype", "auto")).replace("torch.", "")


def free_gpu_share() -> float | None:
    """90% of the GPU memory free now, as a share of the whole (vLLM's gpu_memory_utilization), so the engine
    fits beside the HF model the run already holds; None on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return round(0.9 * free / total, 3)


class VLLMBackend(LmEvalTokens, ModelBackend):
    """Scoring and generation on one vLLM engine (the `ModelBackend` contract)."""

    def __init__(self, settings: VLLMSettings, tokenizer: Any, max_length: int, eos_ids: Sequence[int] = (),
                 add_bos_token: bool | None = None):
        vllm = import_vllm()
        self.settings, self._tokenizer, self.max_length = settings, tokenizer, max_length
        self.add_bos_token = add_bos_token
        self.eos_ids = sorted({i for i in (*eos_ids, tokenizer.eos_token_id) if i is not None})
        self.batch_size: BatchSize = "auto"  # vLLM schedules its own batches
        self.stats = BackendStats()
        self.last_truncated: list[int] = []
        self.init_prefix(tokenizer)
        log.info("starting vLLM on %s (%s, tensor parallel %d)", settings.model_path, settings.dtype,
                 settings.tensor_parallel_size)
        # score prompts hold max_length tokens and ask one more (the pinned last continuation token), so the
        # engine's window is max_length + 1: that extra token is never run through the model, no position beyond
        # the model's own is ever computed
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        try:
            self.llm = vllm.LLM(**settings.engine_kwargs())
        except Exception as exc:  # the engine's own log above says more; this says what to do
            raise ModelLoadError(f"vLLM could not start on {settings.model_path}: {type(exc).__name__}: {exc}",
                                 "vLLM's own output (above; a replica's: its logs/worker_<i>.log) says more; on CPU "
                                 "its attention supports head sizes 32, 64, 80, 96, "
                                 "112, 128, ... (docs/vllm.md); or set engine: hf") from exc

    @classmethod
    def create(cls, loaded: "LoadedModel", batch_size: BatchSize = "auto", gpus: int = 1) -> "VLLMBackend":
        """An engine over `loaded.path`, which must hold the position's weights (the caller saves a transformed
        model first); it runs in the in-memory model's dtype, over `gpus` GPUs (tensor parallel)."""
        from accbench.evaluate.backends.hf import resolve_max_length

        gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
        eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        max_length = resolve_max_length(loaded.model, loaded.tokenizer)
        cuda = str(loaded.device).startswith("cuda")
        if gpus > 1 and not os.environ.get(OMP_BIND_ENV) and free_gpu_share() is None:  # CPU ranks
            from accbench.runners.local import allowed_cores

            os.environ[OMP_BIND_ENV] = cpu_binds(allowed_cores(), 1, gpus)[0]
        settings = VLLMSettings(loaded.path, dtype_name(loaded.model), max(1, gpus), max_length + 1,
                                trust_remote_code=False, gpu_memory_utilization=free_gpu_share() if cuda else None)
        backend = cls(settings, loaded.tokenizer, max_length, [i for i in eos if i is not None])
        backend.batch_size = batch_size
        return backend

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # ------------------------------------------------------------------ public API

    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, bool]]:
        self._count("score", len(requests))
        return self.score_tokens([self.encode_pair(r.context, r.continuation) for r in requests])

    def score_rolling(self, requests: Sequence[RollingRequest]) -> list[float]:
        self._count("score_rolling", len(requests))
        return self.rolling_totals([r.text for r in requests], self.score_tokens)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._count("generate", len(requests))
        prompts, params = [], []
        for i, r in enumerate(requests):
            ids, cut = self.generation_prompt(r.context, r.max_new_tokens)
            if cut:
                self.stats.truncated += 1
                self.last_truncated.append(i)
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            sampled = r.temperature > 0
            params.append(SamplingParams(max_tokens=r.max_new_tokens, temperature=r.temperature,
                                         top_p=r.top_p if sampled else 1.0, top_k=r.top_k if sampled else 0,
                                         seed=r.seed if sampled else None, stop=[s for s in r.stop if s] or None,
                                         stop_token_ids=self.eos_ids, skip_special_tokens=True))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        texts = []
        for r, out in zip(requests, outs):
            tokens = list(out.outputs[0].token_ids)
            self.stats.forward_tokens += len(tokens)
            texts.append(cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), r.stop)[0])
        self.stats.forward_tokens += sum(len(p["prompt_token_ids"]) for p in prompts)
        return texts

    def window_losses(self, request: WindowLossRequest) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from accbench.data.text import load_texts, ppl_token_stream

        if request.seq_len > self.max_length:
            raise DataError(f"task '{request.name}': seq_len={request.seq_len} is longer than the model window "
                            f"({self.max_length}), which vLLM cannot run", "use a smaller seq_len or engine: hf")
        texts = load_texts("custom", request.path)
        stream = ppl_token_stream("custom", texts, self.tokenizer, request.seq_len, request.name).tolist()
        n = len(stream) // request.seq_len if request.limit is None else min(len(stream) // request.seq_len,
                                                                              request.limit)
        windows = [stream[i * request.seq_len : (i + 1) * request.seq_len] for i in range(n)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], params, use_tqdm=False)
        self.stats.forward_tokens += n * request.seq_len
        return [-sum(out.prompt_logprobs[p][w[p]].logprob for p in range(1, len(w))) / (len(w) - 1)
                for w, out in zip(windows, outs)]

    def truncates(self, kind: str, request: Request) -> bool:
        return self.truncates_request(kind, request)

    def release(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    # ------------------------------------------------------------------ scoring core

    def score_tokens(self, pairs: Sequence[tuple[Tokens, Tokens]]) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether every continuation token is vLLM's top one) per token pair;
        a context too long for the window is cut from the left as lm-eval's HFLM cuts it."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        L = self.max_length
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation: log 1, greedy
        todo: list[tuple[int, Tokens, Tokens]] = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                continue
            if len(cont) > L:
                raise AccbenchError(f"a continuation of {len(cont)} tokens is longer than the model window ({L})",
                                    "shorten the choices/targets or use a model with a longer context")
            if len(ctx) + len(cont) > L + 1:
                ctx = (ctx + cont)[-(L + 1):][: -len(cont)]
                self.stats.truncated += 1
                self.last_truncated.append(i)
            todo.append((i, ctx, cont))
        prompts = [TokensPrompt(prompt_token_ids=ctx + cont[:-1]) for _, ctx, cont in todo]
        params = [SamplingParams(max_tokens=1, temperature=0.0, logprobs=1, allowed_token_ids=[cont[-1]],
                                 prompt_logprobs=1 if len(cont) > 1 else None, detokenize=False)
                  for _, _, cont in todo]
        outs = self.llm.generate(prompts, params, use_tqdm=False) if todo else []
        for (i, ctx, cont), out in zip(todo, outs):
            self.stats.forward_tokens += len(ctx) + len(cont) - 1
            results[i] = _continuation_logprob(out, len(ctx), cont)
        return results

    def _count(self, kind: str, n: int) -> None:
        self.stats.requests[kind] = self.stats.requests.get(kind, 0) + n
        self.last_truncated = []


def _continuation_logprob(out: Any, n_ctx: int, cont: Tokens) -> tuple[float, bool]:
    """Sum and greediness of the continuation's log-probabilities in one vLLM output: prompt positions
    n_ctx .. n_ctx + len(cont) - 2, then the pinned generated token."""
    ll, greedy = 0.0, True
    for k, tok in enumerate(cont[:-1]):
        lp = out.prompt_logprobs[n_ctx + k][tok]
        ll += lp.logprob
        greedy = greedy and lp.rank == 1
    sample = out.outputs[0]
    if list(sample.token_ids) != [cont[-1]]:
        raise RuntimeError(f"vLLM generated {list(sample.token_ids)}, not the pinned token {cont[-1]}")
    lp = sample.logprobs[0][cont[-1]]
    return ll + lp.logprob, greedy and lp.rank == 1
