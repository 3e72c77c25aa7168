"""Every config llmc ships (../shared/data/llmc_configs, read-only), paths changed, through `accbench validate`:
each either validates or is refused naming the llmc features not supported yet; no llmc key is ever "unknown",
no typo suggestion, no traceback. The counts and the feature table in docs/config.md are kept true here."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from accbench.llmc_features import feature_table

from llmc_fixtures import LLMC, with_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent")

# problems of llmc's own configs that are not llmc features: llmc itself skips an eval_pos it does not know,
# and asserts save_trans when there is an opencompass section
LLMC_SLIPS = {
    "quantization/backend/vllm/fp8/gptq_fp8.yml": "unknown eval_pos 'fake-quant'",
    "quantization/backend/vllm/tesseraq_w4a16.yml": "unknown eval_pos 'nahh'",
    "quantization/methods/Awq/awq_w_only_opencompass.yml": "the opencompass section evaluates a saved model",
}


def _validate(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["validate", str(path)])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def walked(tmp_path_factory, eval_txt) -> dict[str, tuple[int, str]]:
    """Exit code and stderr of `accbench validate` for every shipped llmc config, paths changed."""
    tmp = tmp_path_factory.mktemp("llmc")
    out = {}
    for f in sorted(LLMC.rglob("*.y*ml")):
        cfg = with_paths(yaml.safe_load(f.read_text()), "builtin:tiny-llama", eval_txt, tmp / "save")
        p = tmp / "cfg.yaml"
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out[f.relative_to(LLMC).as_posix()] = _validate(p)
    return out


def test_every_config_runs_or_is_refused_by_llmc_feature(walked):
    assert len(walked) == 147
    bad = {}
    for name, (code, err) in walked.items():
        problems = [ln for ln in err.splitlines() if ln.startswith("  - ")]
        wrong = [p for p in problems if "is not supported yet" not in p or "llmc's" not in p]
        wrong = [p for p in wrong if not (name in LLMC_SLIPS and LLMC_SLIPS[name] in p)]
        if code not in (0, 2) or "Traceback" in err or wrong or (code == 2 and not problems) \
                or re.search(r"unknown key|unknown quant method|did you mean|is not an option of", err):
            bad[name] = err[-600:]
    assert not bad, "\n\n".join(f"{k}:\n{v}" for k, v in bad.items())
    runs = sorted(k for k, (c, _) in walked.items() if c == 0)
    print(f"\nllmc configs: {len(runs)} run, {len(walked) - len(runs)} refused as not supported yet")


def test_docs_counts_and_feature_table_are_true(walked):
    docs = (REPO / "docs" / "config.md").read_text()
    runs = sum(1 for c, _ in walked.values() if c == 0)
    m = re.search(r"Of the (\d+) configs llmc ships.*?(\d+) validate and run.*?(\d+) are refused", docs, re.S)
    assert m, "docs/config.md lost its llmc counts sentence"
    assert (int(m[1]), int(m[2]), int(m[3])) == (len(walked), runs, len(walked) - runs)
    assert feature_table() in docs, "docs/config.md's llmc feature table differs from llmc_features.feature_table()"


@pytest.mark.parametrize("name,feature", [
    ("quantization/methods/OmniQuant/omniq_w_a.yml", "llmc's OmniQuant method"),
    ("quantization/methods/QuaRot/quarot_w_a.yml", "llmc's Quarot method"),
    ("quantization/methods/HQQ/hqq_w_only.yml", "llmc's HQQ method"),
    ("quantization/methods/LlmInt8/llmint8_w_only.yml", "llmc's LlmInt8 method"),
    ("quantization/methods/RTN/rtn_w_a_vlm.yml", "llmc's multimodal quant objects"),
    ("quantization/video_gen/wan_t2v/rtn_w_a.yaml", "llmc's video generation models"),
    ("quantization/deepseekv3/rtn_w_a_dsv3.yml", "llmc's DeepSeek-V3 MoE-specific configs"),
    ("sparsification/methods/FastV/fastv.yml", "llmc's TokenReduction sparse method"),
    ("sparsification/methods/Kvsparse/sinkkv.yml", "llmc's KV-cache sparsity (sparse.kvcache"),
    ("sparsification/methods/ToMe/tome.yml", "llmc's multimodal sparse sections"),
    ("quantization/methods/KVQuant/rtn_w_a_kivi_quant_kv.yml", "llmc's KV-cache quantization (quant.kvcache)"),
    ("quantization/backend/vllm/awq_w4a16.yml", "llmc's real-quant exports"),
])
def test_refused_by_name_with_line(walked, name, feature):
    code, err = walked[name]
    assert code == 2 and feature in err and "is not supported yet" in err
    assert re.search(r"cfg\.yaml:\d+: ", err)  # with the YAML line


@pytest.mark.parametrize("name", ["sparsification/methods/Magnitude/magnitude.yml",
                                  "sparsification/methods/Wanda/wanda.yml",
                                  "sparsification/methods/ShortGPT/shortgpt.yml"])
def test_sparsity_configs_validate(walked, name):
    code, err = walked[name]
    assert code == 0, err


def test_feature_set_off_is_accepted(tmp_path, eval_txt, capsys):
    cfg = with_paths(yaml.safe_load((LLMC / "quantization/methods/RTN/rtn_w_only.yml").read_text()),
                     "builtin:tiny-llama", eval_txt, tmp_path)
    cfg["save"].update({"save_vllm": False, "save_sgl": False, "save_lightllm": False})
    cfg["quant"]["kvcache"] = None
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(p)]) == 0, capsys.readouterr().err
    cfg["save"]["save_vllm"] = True
    p.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(p)]) == 2
    assert "save.save_vllm: llmc's real-quant exports" in capsys.readouterr().err
