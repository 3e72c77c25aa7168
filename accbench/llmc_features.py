"""llmc's config surface, feature by feature: what accbench runs, what it accepts as a no-op, what it refuses.

Every key and value llmc's own configs use (ModelTC/llmc `configs/quantization/` and
`configs/sparsification/`) is in `FEATURES`, so that such a key is never reported as unknown or given a typo
suggestion. `llmc_problems` runs before the config's pydantic validation: a feature not supported yet and
switched on gives the problem "llmc's X is not supported yet" at its YAML line, and the key is taken out (with
a neutral stand-in where a section needs it) so that the rest of the config is still checked; a feature set
off (`save_vllm: False`) or one that changes nothing accbench computes (`need_pack`) is taken out silently.
docs/config.md holds the table `feature_table()` renders; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from accbench.errors import ConfigProblem

Path_ = tuple  # a key path: str keys and int list indices


def _on(v: Any) -> bool:
    return v not in (False, None, 0, "", [], {})


def _always(v: Any) -> bool:
    return True



def _not_in(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v not in allowed


def _in(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v in values


@dataclass(frozen=True)
class Feature:
    """One llmc feature: the keys that ask for it, when they do (`when(value)`), and accbench's status.

    status: "supported" (accbench acts on it; the key stays for the config model), "no-op" (accepted and taken
    out: it changes nothing accbench computes), "not yet" (refused when `when` holds; accepted when off).
    """

    name: str
    keys: tuple[str, ...]
    status: str = "not yet"
    when: Callable[[Any], bool] = _on
    note: str = ""


VLM_TYPES = ("Llava", "Llava OneVision", "Qwen2VL", "Qwen2_5VL", "InternVL2", "InternOmni", "Qwen2Audio", "Vit",
             "Mllama", "LlavaHf", "Videollava", "Gemma3", "DeepseekVL2")
VIDEO_TYPES = ("WanI2V", "WanT2V", "Wan2T2V")
VIDEO_KEYS = ("num_frames", "target_height", "target_width", "guidance_scale", "output_video_path", "sample_steps")
REAL_QUANT_EXPORTS = ("save_vllm", "save_sgl", "save_autoawq", "save_autogptq", "save_mlcllm", "save_lightllm",
                      "save_trtllm", "save_lightx2v")
BUILT_EXPORTS = ("save_vllm", "save_sgl")  # compressed-tensors checkpoints (accbench/export/)

FEATURES: tuple[Feature, ...] = (
    # ------------------------------------------------------------------ supported
    Feature("RTN, AWQ, GPTQ, SmoothQuant, OmniQuant and HQQ (quant.method)", ("quant.method",), "supported"),
    Feature("QuaRot (quant.method: Quarot; rotate_mode, online_rotate, fp32_had) and GPTQ's online_rotate / fp32_had "
            "(quarot_comb_gptq); GPTQ's chunk_num (the same Hessian)",
            ("quant.special.rotate_mode", "quant.special.online_rotate", "quant.special.chunk_num"), "supported"),
    Feature("LLM.int8() (quant.method: LlmInt8; threshold)", ("quant.special.threshold",), "supported"),
    Feature("integer weight quantization: bit 2-8, symmetric, per_tensor/per_channel/per_group, calib_algo "
            "minmax/mse/learnable (learnable: OmniQuant's LWC, AWQ's clip_version v2)", ("quant.weight",), "supported"),
    Feature("integer activation quantization: per_token/per_tensor, dynamic or static (minmax)", ("quant.act",),
            "supported"),
    Feature("activation calibration minmax (quant.act.calib_algo: minmax)", ("quant.act.calib_algo",), "no-op",
            _in("minmax"), "minmax is how static ranges are calibrated"),
    Feature("perplexity evaluation (eval.type: ppl)", ("eval.type",), "no-op", _in("ppl"), "llmc's default"),
    Feature("decode perplexity and token agreement (eval.type: decode_ppl, token_acc; eval.num_eval_tokens)",
            ("eval.type",), "supported", _in("decode_ppl", "token_acc"),
            "token_acc is fidelity's top-1 agreement with the baseline"),
    Feature("eval positions pretrain, transformed, fake_quant, fake_quant_wo_kv, real_quant", ("eval.eval_pos",), "supported"),
    Feature("KV-cache quantization (quant.kvcache: Naive, Kivi; bit, symmetric, per_token/per_tensor/per_group, "
            "group_size, residual_length; static with quant.act.static)", ("quant.kvcache",), "supported"),
    Feature("real-quant compressed-tensors export for vLLM / SGLang (save_vllm, save_sgl; folders vllm_quant_model, "
            "sgl_quant_model) of RTN, AWQ, GPTQ, SmoothQuant, OmniQuant, QuaRot (online_rotate: False) and HQQ "
            "(round_zp: True, axis: 1) results, evaluated at real_quant",
            tuple(f"save.{k}" for k in BUILT_EXPORTS), "supported"),
    Feature("eval.num_samples, eval.inference_per_block, eval.eval_token_consist", ("eval.num_samples",),
            "supported"),
    Feature("calibration preprocessing wikitext2_gptq, c4_gptq, ptb_gptq, pileval_awq, pileval_smooth, "
            "pileval_omni, random_truncate_txt, txt_general_preproc, original_txt, ultrachat_general",
            ("calib.preproc",), "supported"),
    Feature("chat calibration data: custom_txt samples.json (apply_chat_template, add_answer), ultrachat "
            "conversations, padding", ("calib.apply_chat_template", "calib.padding", "calib.add_answer"),
            "supported"),
    Feature("save_trans / save_fake (folders transformed_model, fake_quant_model under save_path)",
            ("save.save_trans", "save.save_fake"), "supported"),
    Feature("base.seed", ("base.seed",), "supported"),
    Feature("ignored layers kept in high precision (ignored_layers: block_ids, layer_names, speical_names)",
            ("ignored_layers",), "supported"),
    Feature("per_block weights (granularity: per_block, block_size; symmetric; RTN and SmoothQuant)",
            ("quant.weight.block_size",), "supported"),
    Feature("FP8 weights and activations (quant_type: float-quant, bit: e4m3 / e5m2; RTN, AWQ, SmoothQuant)",
            ("quant.weight.quant_type", "quant.act.quant_type"), "supported"),
    Feature("small float formats, weights and activations (bit: e2m1 / e3m2 / e4m7, QPyTorch's rounding; RTN, AWQ, "
            "GPTQ, SmoothQuant)", ("quant.weight.bit", "quant.act.bit"), "supported",
            lambda v: isinstance(v, str) and v not in ("e4m3", "e5m2")),
    Feature("float quantization named in quant.special (quant_type: float-quant)", ("quant.special.quant_type",),
            "no-op", _always, "llmc at the configs' commit does not read it: the format comes from quant.weight"),
    Feature("explicit integer grid (int_range: [qmin, qmax])", ("quant.weight.int_range",), "supported", _always),
    Feature("unrounded asymmetric zero point (round_zp: False)", ("quant.weight.round_zp",), "supported", _always),
    Feature("W4A8 two-level weights (bit: 48 with bit4 / bit8; RTN, SmoothQuant)",
            ("quant.weight.bit4", "quant.weight.bit8"), "supported", _always),
    Feature("W4A8 two-level weights (bit: 48)", ("quant.weight.bit",), "supported", _in(48)),
    Feature("per_group activation quantization (granularity: per_group, group_size)",
            ("quant.act.group_size",), "supported", _always),
    Feature("static histogram activation calibration (calib_algo: static_hist)", ("quant.act.calib_algo",),
            "supported", _in("static_hist")),
    Feature("mixed precision by layer (quant.mix_bits: setting_<i> with layer_name, do_quant, weight, act)",
            ("quant.mix_bits",), "supported", _always,
            "llmc stopped reading mix_bits in b0bf39e (May 2025), before the configs' commit; accbench applies the "
            "meaning it had until then"),
    Feature("sparsity: Magnitude and Wanda (sparse.weight.sparsity; accbench adds sparsity_type N:M) and ShortGPT "
            "(sparse.weight.n_prune_layers); sparse.sparsity_out", ("sparse.method", "sparse.weight",
                                                                   "sparse.sparsity_out"), "supported"),
    Feature("a list of eval datasets (eval.name: [wikitext2, c4], each read from path/<name>)", ("eval.name",),
            "supported"),
    Feature("llmc's generate_only eval (type: generate_only, name: custom_gen; max_new_tokens, apply_chat_template; "
            "run as a generate_only task) and custom_ppl (perplexity of samples.json)",
            ("eval.max_new_tokens", "eval.apply_chat_template"), "supported"),
    Feature("model.type of a text model (architecture read from config.json; llmc's system prompt for "
            "apply_chat_template)", ("model.type",), "supported",
            lambda v: v not in VLM_TYPES + VIDEO_TYPES + ("DeepseekV3",)),
    Feature("torch_dtype written as torch.<dtype>", ("model.torch_dtype",), "supported",
            _in("torch.bfloat16", "torch.float16", "torch.float32")),
    Feature("straight-through estimator (ste)", ("quant.weight.ste", "quant.act.ste"), "no-op", _always,
            "changes gradients only; fake-quantized values are the same"),
    Feature("real-quant packing options (need_pack, pack_version, pack_mode)",
            ("quant.weight.need_pack", "quant.weight.pack_version", "quant.weight.pack_mode"), "no-op", _always,
            "used only by the real-quant exports"),
    Feature("qmax_to_tensor", ("quant.weight.qmax_to_tensor", "quant.act.qmax_to_tensor"), "no-op", _always,
            "llmc's code at the configs' commit does not read it"),
    Feature("qtorch for float formats (use_qtorch)", ("quant.weight.use_qtorch", "quant.act.use_qtorch"), "no-op",
            _always, "an implementation choice of llmc"),
    Feature("llmc's catcher offload (model.use_cpu_to_save_cuda_mem_for_catcher)",
            ("model.use_cpu_to_save_cuda_mem_for_catcher",), "no-op", _always,
            "blockwise calibration keeps blocks on CPU anyway"),
    Feature("real-quant exports set off (save_vllm: False, ...)", tuple(f"save.{k}" for k in REAL_QUANT_EXPORTS),
            "no-op", lambda v: not _on(v)),
    Feature("save.save_fp: False", ("save.save_fp",), "no-op", lambda v: not _on(v)),
    Feature("quant_objects: [language]", ("quant.quant_objects",), "no-op", _in(["language"])),
    # ------------------------------------------------------------------ not supported yet
    Feature("vision-language and audio models", ("model.type",), when=_in(*VLM_TYPES)),
    Feature("video generation models", ("model.type",), when=_in(*VIDEO_TYPES)),
    Feature("DeepSeek-V3 MoE-specific configs", ("model.type",), when=_in("DeepseekV3")),
    Feature("loading FP8 checkpoints (torch_dtype: torch.float8_e4m3fn)", ("model.torch_dtype",),
            when=_in("torch.float8_e4m3fn")),
    Feature("LoRA weights (model.lora_path)", ("model.lora_path",)),
    Feature("KV-cache sparsity (sparse.kvcache: ShadowKV, SinkKV)", ("sparse.kvcache",)),
    Feature("multimodal sparse sections (sparse.vision, sparse.language)", ("sparse.vision", "sparse.language")),
    Feature("token reduction", ("token_reduction", "quant.language.token_reduction")),
    Feature("multimodal quant objects (quant.quant_objects, quant.language/vision/video_gen)",
            ("quant.quant_objects", "quant.language", "quant.vision", "quant.video_gen"),
            when=lambda v: v != ["language"]),
    Feature("float KV-cache quantization (quant.kvcache.quant_type: float-quant)", ("quant.kvcache.quant_type",),
            when=_in("float-quant")),
    Feature("float formats other than e4m3, e5m2, e2m1, e3m2, e4m7", ("quant.weight.bit", "quant.act.bit"),
            when=lambda v: isinstance(v, str) and v not in ("e4m3", "e5m2", "e2m1", "e3m2", "e4m7")),
    Feature("DGQ's two-level weights (w_1 / w_2)", ("quant.weight.w_1", "quant.weight.w_2")),
    Feature("activation calibration static_minmax / static_moving_minmax", ("quant.act.calib_algo",),
            when=_not_in("minmax", "static_hist")),
    Feature("eval types acc, code, vqa, video_gen", ("eval.type",),
            when=_not_in("ppl", "decode_ppl", "token_acc", "generate_only")),
    Feature("lm-eval tasks in the eval section (eval.tasks)", ("eval.tasks",)),
    Feature("video generation options", tuple(f"{s}.{k}" for s in ("eval", "calib") for k in VIDEO_KEYS),
            when=_always),
    Feature("multimodal calibration data (calib.type)", ("calib.type",), when=_always),
    Feature("calibration preprocessing vlm_general / img_general (multimodal)", ("calib.preproc",),
            when=_in("vlm_general", "img_general")),
    Feature("real-quant exports (save_autoawq, save_autogptq, save_mlcllm, save_lightllm, save_trtllm, save_lightx2v)",
            tuple(f"save.{k}" for k in REAL_QUANT_EXPORTS if k not in BUILT_EXPORTS) + ("save.trtllm_cfg",
                                                                                        "save.tp_size")),
    Feature("save_fp", ("save.save_fp",)),
)

# llmc's quantization methods (its registry); those accbench has not built are refused by name
LLMC_METHODS = ("AdaDim", "Awq", "DGQ", "FP8", "GPTBRECQ", "GPTQ", "HQQ", "LlmInt8", "NormTweaking", "OmniQuant",
                "OsPlus", "QUIK", "QuIP", "Quarot", "RTN", "SmoothQuant", "SpQR", "TesseraQ", "Tesseraq",
                "KVQuant", "Kivi", "SlimPLM", "AWQ")

# llmc's sparsification methods (sparse.method); those accbench has not built are refused by name
LLMC_SPARSE_METHODS = {"Magnitude": "", "Wanda": "", "ShortGPT": "", "Dense": " (no sparsity, with KV-cache sparsity)",
                       "TokenReduction": " (token reduction for vision-language models)"}
_SPARSE_STAND_IN = {"method": "Magnitude", "weight": {"sparsity": 0.5}}  # so the rest of a config is still checked

# method options llmc defines (quant.special) that accbench's methods lack: refused by name when on
LLMC_SPECIAL: dict[str, str] = {
    "owq": "outlier-aware GPTQ (owq)", "n_outs": "outlier-aware GPTQ (n_outs)",
    "load_transform": "loading transforms (load_transform)", "save_mem": "AWQ's save_mem",
}
# special keys that only matter to an option above, accepted when that option is off
_FOLLOWS = {"n_outs": "owq"}


def _entries(node: Any, parts: list[str], path: Path_) -> Iterator[tuple[Path_, Any]]:
    """(path, value) of every key matching `parts`; list items (eval: [...]) are walked through."""
    if isinstance(node, list) and path in (("eval",), ("calib",)):
        for i, item in enumerate(node):
            yield from _entries(item, parts, path + (i,))
        return
    if not parts:
        yield path, node
        return
    if isinstance(node, dict) and parts[0] in node:
        yield from _entries(node[parts[0]], parts[1:], path + (parts[0],))


def _drop(data: dict, path: Path_) -> None:
    node: Any = data
    for p in path[:-1]:
        node = node[p]
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _set(data: dict, path: Path_, value: Any) -> None:
    node: Any = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _problem(path: Path_, what: str, lines: dict, source: str | None, hint: str) -> ConfigProblem:
    line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
    return ConfigProblem(".".join(map(str, path)), f"llmc's {what} is not supported yet; {hint}", line, source)


def llmc_problems(data: dict, built: list[str], lines: dict, source: str | None) -> tuple[list[ConfigProblem], dict]:
    """The llmc features of `data` accbench does not support yet (one problem each), and a copy of `data`
    with those and the accepted no-op keys taken out, for the config model to check the rest."""
    data = _copy(data)
    problems: list[ConfigProblem] = []
    sparse = data.get("sparse")
    multimodal_sparse = isinstance(sparse, dict) and any(k in sparse for k in ("vision", "language"))
    for f in FEATURES:
        for key in f.keys:
            for path, value in list(_entries(data, key.split("."), ())):
                if not f.when(value):
                    if f.status == "not yet" and f.when is _on:
                        _drop(data, path)  # the feature set off asks for nothing
                    continue
                if f.status == "not yet":
                    problems.append(_problem(path, f.name, lines, source, "remove it (or set it off)"))
                    _drop(data, path)
                    if path[-1] == "bit":  # the stand-in integer bit goes without float-quant
                        _drop(data, path[:-1] + ("quant_type",))
                elif f.status == "no-op":
                    _drop(data, path)
                elif key == "model.torch_dtype":
                    data["model"]["torch_dtype"] = value.removeprefix("torch.")
    problems += _method_problems(data, built, lines, source) + _sparse_problems(data, multimodal_sparse, lines, source)
    return problems, data


def _sparse_problems(data: dict, multimodal: bool, lines: dict, source: str | None) -> list[ConfigProblem]:
    """llmc's sparse methods accbench has not built, refused by name; a refused (or emptied) section is replaced
    by a stand-in so that the rest of the config (eval_pos transformed) is still checked."""
    from accbench.config_sparse import SPARSE_METHODS

    sparse = data.get("sparse")
    if not isinstance(sparse, dict):
        return []
    method = sparse.get("method")
    if isinstance(method, str) and method in LLMC_SPARSE_METHODS and method not in SPARSE_METHODS:
        data["sparse"] = _copy(_SPARSE_STAND_IN)
        return [_problem(("sparse", "method"), f"{method} sparse method{LLMC_SPARSE_METHODS[method]}", lines, source,
                         f"accbench builds {', '.join(SPARSE_METHODS)}")]
    if multimodal and "method" not in sparse:  # its multimodal sections were refused above
        data["sparse"] = _copy(_SPARSE_STAND_IN)
    return []


def _method_problems(data: dict, built: list[str], lines: dict, source: str | None) -> list[ConfigProblem]:
    quant = data.get("quant")
    if not isinstance(quant, dict):
        return []
    out = []
    method = quant.get("method")
    if isinstance(method, str) and method.lower() not in {b.lower() for b in built} \
            and method.lower() in {m.lower() for m in LLMC_METHODS}:
        out.append(_problem(("quant", "method"), f"{method} method", lines, source,
                            f"accbench builds {', '.join(built)}"))
        quant["method"] = "RTN"  # a stand-in so the rest of the config is still checked
        quant.pop("special", None)
    elif "method" not in quant:
        quant["method"] = "RTN"  # the multimodal quant sections were refused above
    special = quant.get("special")
    if isinstance(special, dict):
        for key, what in LLMC_SPECIAL.items():
            if key not in special:
                continue
            follows = _FOLLOWS.get(key)
            if _on(special[key]) and not (follows and not _on(special.get(follows))):
                out.append(_problem(("quant", "special", key), what, lines, source, "remove it (or set it off)"))
            special.pop(key)
    return out


def feature_table() -> str:
    """The markdown table of llmc features and their status in accbench (docs/config.md holds it)."""
    rows = ["| llmc feature | keys | accbench |", "|---|---|---|"]
    status = {"supported": "supported", "no-op": "accepted (changes nothing here)", "not yet": "not supported yet"}
    for f in FEATURES:
        note = f" ({f.note})" if f.note else ""
        rows.append(f"| {f.name} | {', '.join(f'`{k}`' for k in f.keys)} | {status[f.status]}{note} |")
    for key, what in LLMC_SPECIAL.items():
        rows.append(f"| {what} | `quant.special.{key}` | not supported yet |")
    rows.append(f"| llmc methods not built: {', '.join(m for m in LLMC_METHODS if m not in _BUILT_DOC)} "
                "| `quant.method` | not supported yet |")
    from accbench.config_sparse import SPARSE_METHODS

    rows.append(f"| llmc sparse methods not built: {', '.join(m for m in LLMC_SPARSE_METHODS if m not in SPARSE_METHODS)} "
                "| `sparse.method` | not supported yet |")
    return "\n".join(rows) + "\n"


_BUILT_DOC = ("RTN", "Awq", "AWQ", "GPTQ", "SmoothQuant", "Quarot", "LlmInt8", "OmniQuant", "HQQ")
