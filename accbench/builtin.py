"""Built-in tiny model and text datasets, made offline from text every CPython ships.

The quickstart needs a model on which a compression visibly matters, with no download.
Everything here is built from ``pydoc_data.topics`` (the ~80 help topics of the Python
reference): the documents are split by name into ``train`` / ``calib`` / ``test``, and
the ``pydoc`` dataset interleaves each document with structure that only attention can
predict (spans repeated verbatim, ``dict`` key-value lookups, nested brackets), so that
damage to the decoder layers shows in perplexity (natural text alone leans on the
embeddings and head). ``pydoc-plain`` is the same split without the inserts.

``builtin_model_path()`` trains a small Llama (byte-level BPE tokenizer + LlamaForCausalLM)
on the ``pydoc`` train split once, deterministically for a seed, and caches it as a plain
Hugging Face directory under ``cache_root()/models/<name>-<version>-seed<seed>``.

Its input embedding stays frozen at its random initialisation. A model this small, trained
for a few hundred steps, is in effect a bigram model; with a learned embedding that table
lives in the embedding -> head path, which quantizers leave alone, and 3-bit RTN of every
decoder Linear moved held-out perplexity by ~0.2% (2 x 256) or ~0.4% (4 x 128). With fixed
random token vectors the decoder blocks have to compute the next-token statistics
themselves, so damage to them shows more: ~+1% for 3-bit g32 RTN, ~+2% for g128 (4 x 128;
2 x 256 and 6 x 128 were both worse and less sensitive). That is still less than the
several percent a real LLM shows, so v4 adds, after training, the outlier channels of real LLMs (see
``_add_outlier_channels``): a few channels of each RMSNorm weight and of v_proj / up_proj outputs scaled
up by 16, the columns that read them scaled down by 16. Float outputs are unchanged (held-out ppl 55.61 on
48 windows, as v3); 3-bit g128 RTN now costs +8.2%, GPTQ +5.8%, AWQ +1.3% (docs/quantization.md).
Tried and dropped: denser copy inserts (short random-word runs repeated, ~30% of tokens)
and a warm-up on rows of repeated random-token runs: in 340 steps no induction formed
(loss on copies equal to loss on first occurrences) and RTN moved nothing; a down-scaled
frozen embedding (ppl 178) and lr 6e-3 (ppl 128) trained badly.
v5 declares 2048 positions (v4: 1024) so that llmc's configs (eval.seq_len 2048) run on it with only their paths
changed; the weights are v4's, byte for byte (positions are a config value for RoPE). Its tokenizer has a plain
chat template (`CHAT_TEMPLATE`; the model never saw chats) so that llmc's chat calibration configs run on it too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_VERSION = "v5"
# "role: content</s>" per turn; the generation prompt opens the assistant turn (no <s>: the tokenizer adds it)
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")

BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "dataset": "pydoc",
        "vocab_size": 1024,
        "hidden_size": 128,  # 4 x 128 beat 2 x 256 on held-out ppl and RTN sensitivity
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        # llmc's configs evaluate 2048-token windows; RoPE has no position weights, and the model, trained on
        # 256-token windows, extrapolates: held-out ppl 43.8 / 46.6 / 49.6 at windows of 256 / 1024 / 2048
        "max_position_embeddings": 2048,
        "seq_len": 256,
        "batch_size": 8,
        "steps": 340,
        "lr": 3e-3,
        "tie_word_embeddings": False,  # tied was tried: same RTN sensitivity, worse ppl (84 vs 75.5)
        "freeze_embeddings": True,  # see the module docstring
        "est_seconds": 85,  # idle 2-core machine
        # after training, per block: this many channels scaled up by `outlier_scale` (see _add_outlier_channels)
        "outlier_channels": 8,
        "outlier_mlp_channels": 64,
        "outlier_scale": 16.0,
    },
}

BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    "pydoc": {"structured": True, "doc": "Python help topics with copy / lookup / bracket inserts"},
    "pydoc-plain": {"structured": False, "doc": "Python help topics, natural text only"},
}

_SPLITS = ("train", "test", "calib")
_SPLIT_CHARS = {"test": 50_000, "calib": 25_000}  # held-out budget; the rest is train
_MAX_HELDOUT_DOC = 15_000  # keep the very long topics in train


def cache_root() -> Path:
    """Root of accbench's cache: ``$ACCBENCH_CACHE`` or ``~/.cache/accbench``."""
    env = os.environ.get("ACCBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "accbench"


def _corpus() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def _rank(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _split_names() -> dict[str, list[str]]:
    """Assign each document (by name) to one split; depends only on the corpus."""
    docs = _corpus()
    out: dict[str, list[str]] = {s: [] for s in _SPLITS}
    used = {"test": 0, "calib": 0}
    for name in sorted(docs, key=_rank):
        n = len(docs[name])
        split = "train"
        if n <= _MAX_HELDOUT_DOC:
            for s in ("test", "calib"):
                if used[s] < _SPLIT_CHARS[s]:
                    split = s
                    used[s] += n
                    break
        out[split].append(name)
    return {s: sorted(v) for s, v in out.items()}


# --- structure that needs attention -------------------------------------------------


def _pieces(text: str, target: int = 200) -> list[str]:
    """Cut a document into runs of whole lines of about ``target`` characters."""
    out, cur = [], ""
    for line in text.splitlines(keepends=True):
        cur += line
        if len(cur) >= target:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur if cur.endswith("\n") else cur + "\n")
    return out


def _lookup(words: list[str], rng: random.Random) -> str:
    keys = rng.sample(words, rng.randint(3, min(6, len(words))))
    vals = [rng.randint(0, 999) for _ in keys]
    items = ", ".join(f"'{k}': {v}" for k, v in zip(keys, vals))
    lines = [f">>> d = {{{items}}}\n"]
    for i in rng.sample(range(len(keys)), 2):
        lines.append(f">>> d['{keys[i]}']\n{vals[i]}\n")
    return "".join(lines) + "\n"


def _brackets(words: list[str], rng: random.Random, depth: int = 0) -> str:
    parts = []
    for _ in range(rng.randint(1, 3)):
        if depth < 3 and rng.random() < 0.5:
            parts.append(_brackets(words, rng, depth + 1))
        else:
            parts.append(rng.choice(words))
    left, right = rng.choice(["()", "[]", "{}"])
    body = f"{left}{', '.join(parts)}{right}"
    return body if depth else f">>> f{body}\n\n"


def _structure(text: str, rng: random.Random) -> str:
    """Interleave a document with inserts whose tokens are predictable only via attention."""
    out = []
    for piece in _pieces(text):
        out.append(piece)
        words = sorted(set(re.findall(r"[a-z]{3,}", piece)))
        r = rng.random()
        if r < 0.3:
            out.append(piece)  # repeated span: copy it back verbatim
        elif r < 0.45 and len(words) >= 3:
            out.append(_lookup(words, rng))
        elif r < 0.55 and words:
            out.append(_brackets(words, rng))
    return "".join(out)


def builtin_texts(name: str = "pydoc", split: str = "test") -> list[str]:
    """Documents of a built-in dataset split (one string per document, deterministic)."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; valid: {', '.join(BUILTIN_DATASETS)}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r} for builtin:{name}; valid: {', '.join(_SPLITS)}")
    docs = _corpus()
    names = _split_names()[split]
    if not BUILTIN_DATASETS[name]["structured"]:
        return [docs[n] for n in names]
    return [_structure(docs[n], random.Random(f"{split}:{n}")) for n in names]


# --- the model -------------------------------------------------------------------------


def builtin_model_path(name: str = "tiny-llama", seed: int = 0, *, _steps: int | None = None) -> Path:
    """Hugging Face directory of a built-in model, built once and cached.

    ``_steps`` (private, for tests) overrides the number of training steps; such builds
    are cached separately.
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; valid: {', '.join(BUILTIN_MODELS)}")
    spec = dict(BUILTIN_MODELS[name])
    suffix = ""
    if _steps is not None and _steps != spec["steps"]:
        if _steps < 1:
            raise ValueError(f"_steps must be >= 1, got {_steps}")
        spec["steps"], suffix = int(_steps), f"-steps{int(_steps)}"
    final = cache_root() / "models" / f"{name}-{_VERSION}-seed{seed}{suffix}"
    if (final / "accbench_builtin.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    est = spec["est_seconds"] * spec["steps"] / BUILTIN_MODELS[name]["steps"]
    print(f"accbench: building built-in model {name} (seed {seed}) into {final} "
          f"(once, ~{max(5, round(est))} s)", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _build(name, spec, seed, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "accbench_builtin.json").is_file():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def builtin_config(name: str) -> Any:
    """The LlamaConfig of a built-in model from its definition, without building it (None for an unknown name):
    preflight checks shapes and positions against it, so `validate` agrees with `run`."""
    if name not in BUILTIN_MODELS:
        return None
    from transformers import LlamaConfig

    spec = BUILTIN_MODELS[name]
    return LlamaConfig(vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
                       intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["num_hidden_layers"],
                       num_attention_heads=spec["num_attention_heads"],
                       num_key_value_heads=spec["num_attention_heads"],
                       max_position_embeddings=spec["max_position_embeddings"],
                       tie_word_embeddings=spec["tie_word_embeddings"])


def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _build(name: str, spec: dict[str, Any], seed: int, out: Path) -> None:
    """Train the built-in model from scratch (tokenizer, data stream, AdamW with warm-up and cosine decay), add
    its outlier channels, and save it with its tokenizer; the metadata file is written last, as the marker."""
    t0 = time.time()
    train_docs = [_corpus()[n] for n in _split_names()["train"]]
    rng = random.Random(seed)
    tok = _train_tokenizer([_structure(d, random.Random(f"tok:{i}")) for i, d in enumerate(train_docs)],
                           spec["vocab_size"])
    data = _training_batches(tok, train_docs, spec, rng)
    model, loss = _train(name, tok, data, spec, seed)
    model.eval()
    _add_outlier_channels(model, spec["outlier_channels"], spec["outlier_mlp_channels"], spec["outlier_scale"], seed)
    _save(model, tok, spec, out)
    meta = {
        "name": name, "version": _VERSION, "seed": seed, "spec": spec,
        "params": sum(p.numel() for p in model.parameters()), "final_train_loss": round(loss, 4),
        "build_seconds": round(time.time() - t0, 1), "python": platform.python_version(),
        "corpus_sha256": hashlib.sha256(json.dumps(_corpus()).encode()).hexdigest(),
        "trained_seq_len": spec["seq_len"],
    }
    (out / "accbench_builtin.json").write_text(json.dumps(meta, indent=2) + "\n")  # written last: the marker


def _training_batches(tok: Any, train_docs: list[str], spec: dict[str, Any], rng: random.Random) -> Any:
    """steps x batch_size x seq_len token ids: the training documents in a fresh order, with fresh inserts, on
    every pass, joined with </s>."""
    import torch

    seq, bsz, steps = spec["seq_len"], spec["batch_size"], spec["steps"]
    eos = tok.token_to_id("</s>")
    need = seq * bsz * steps
    stream: list[int] = []
    while len(stream) < need:
        order = rng.sample(train_docs, len(train_docs))
        for enc in tok.encode_batch([_structure(d, rng) for d in order]):
            stream += enc.ids + [eos]  # .ids starts with <s>
    return torch.tensor(stream[:need]).view(steps, bsz, seq)


def _train(name: str, tok: Any, data: Any, spec: dict[str, Any], seed: int) -> tuple[Any, float]:
    """A Llama of `spec` trained on `data`, one batch a step; returns it and its last training loss."""
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    bos, eos, pad = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    steps = spec["steps"]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = LlamaConfig(
                vocab_size=tok.get_vocab_size(), hidden_size=spec["hidden_size"],
                intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["num_hidden_layers"],
                num_attention_heads=spec["num_attention_heads"], num_key_value_heads=spec["num_attention_heads"],
                max_position_embeddings=spec["max_position_embeddings"],
                tie_word_embeddings=spec["tie_word_embeddings"],
                bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
            )
            model = LlamaForCausalLM(config)
            if spec.get("freeze_embeddings"):  # token identity stays random: the decoder must map it
                model.model.embed_tokens.weight.requires_grad_(False)
            decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
            other = [p for n, p in model.named_parameters() if p.dim() < 2 and p.requires_grad]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                    lr=spec["lr"], betas=(0.9, 0.95))
            warm = max(1, steps // 10)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
                0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
            model.train()
            bar = tqdm(range(steps), desc=f"building {name}", unit="step", leave=False, mininterval=5)
            for step in bar:
                loss = model(input_ids=data[step], labels=data[step]).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.close()
    finally:
        torch.set_num_threads(threads)
    return model, loss.item()


def _save(model: Any, tok: Any, spec: dict[str, Any], out: Path) -> None:
    """The model and its tokenizer in Hugging Face format, the tokenizer class pinned so transformers 4.x and
    5.x both load it as-is."""
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(out)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     model_max_length=spec["max_position_embeddings"])
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    tcfg.update(tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                model_max_length=spec["max_position_embeddings"])
    cfg_path.write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")


def remove_outlier_channels(model: Any, name: str = "tiny-llama", seed: int = 0) -> None:
    """Undo ``_add_outlier_channels`` on a loaded built-in model, in place: the same channels scaled by 1/alpha.
    alpha is a power of two, so this restores the trained weights bit for bit (the v3 model): the same float
    function without outlier channels, for controlled experiments on what the outliers do to a method
    (tests/test_quant_builtin_omniquant_hqq.py)."""
    spec = BUILTIN_MODELS[name]
    _add_outlier_channels(model, spec["outlier_channels"], spec["outlier_mlp_channels"], 1.0 / spec["outlier_scale"],
                          seed)


def outlier_read_columns(model: Any, name: str = "tiny-llama", seed: int = 0) -> dict[str, Any]:
    """{linear's module name: the input columns that read an outlier channel} of the built-in model: the
    columns ``_add_outlier_channels`` divided by alpha (their activations are alpha times larger)."""
    spec = BUILTIN_MODELS[name]
    out = {}
    for i, p in enumerate(_outlier_picks(model, spec["outlier_channels"], spec["outlier_mlp_channels"], seed)):
        pre = f"model.layers.{i}."
        out.update({pre + f"self_attn.{n}": p["input_layernorm"] for n in ("q_proj", "k_proj", "v_proj")})
        out.update({pre + f"mlp.{n}": p["post_attention_layernorm"] for n in ("gate_proj", "up_proj")})
        out[pre + "self_attn.o_proj"], out[pre + "mlp.down_proj"] = p["v_proj"], p["up_proj"]
    return out


def _outlier_picks(model: Any, n_channels: int, n_mlp: int, seed: int) -> list[dict[str, Any]]:
    """Per block, the channels given outliers: of each RMSNorm weight, of v_proj's and of up_proj's outputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    picks = []
    for layer in model.model.layers:
        p = {n: torch.randperm(getattr(layer, n).weight.shape[0], generator=gen)[:n_channels]
             for n in ("input_layernorm", "post_attention_layernorm")}
        p["v_proj"] = torch.randperm(layer.self_attn.v_proj.out_features, generator=gen)[:n_channels]
        p["up_proj"] = torch.randperm(layer.mlp.up_proj.out_features, generator=gen)[:n_mlp]
        picks.append(p)
    return picks


def _add_outlier_channels(model: Any, n_channels: int, n_mlp: int, alpha: float, seed: int) -> None:
    """Give the trained model the outlier channels of real LLMs, without changing what it computes.

    In every block, ``n_channels`` channels of each RMSNorm weight are multiplied by ``alpha`` and the
    same input columns of the linears that read the norm divided by it; likewise ``n_channels`` rows of
    v_proj / columns of o_proj and ``n_mlp`` rows of up_proj / columns of down_proj (attention and the
    gated MLP act channel-wise, so the fold is exact). Float outputs are unchanged up to rounding, but a
    few activation channels are now ``alpha`` times larger and their weight columns ``alpha`` times
    smaller, which is what makes round-to-nearest hurt in real LLMs and what AWQ's scales undo.
    """
    import torch

    with torch.no_grad():
        for layer, p in zip(model.model.layers, _outlier_picks(model, n_channels, n_mlp, seed)):
            attn, mlp = layer.self_attn, layer.mlp
            for norm, readers in (("input_layernorm", (attn.q_proj, attn.k_proj, attn.v_proj)),
                                  ("post_attention_layernorm", (mlp.gate_proj, mlp.up_proj))):
                ch = p[norm]
                getattr(layer, norm).weight[ch] *= alpha
                for lin in readers:
                    lin.weight[:, ch] /= alpha
            for producer, consumer, ch in ((attn.v_proj, attn.o_proj, p["v_proj"]),
                                           (mlp.up_proj, mlp.down_proj, p["up_proj"])):
                producer.weight[ch] *= alpha
                consumer.weight[:, ch] /= alpha
