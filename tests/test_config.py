"""Config validation: llmc configs validate as they are; every kind of bad input is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from accbench.cli import main
from accbench.config import apply_overrides, load_config, parse_override
from accbench.errors import ConfigError

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("name", ["awq_w4a16_opencompass.yaml", "gptq_w4a16.yaml", "smoothquant_w8a8.yaml"])
def test_llmc_examples_validate(name):
    cfg = load_config(EXAMPLES / "llmc" / name)
    assert cfg.model.path == "/models/Meta-Llama-3-8B"
    assert cfg.eval[0].name == "wikitext2"
    assert cfg.quant is not None and cfg.quant.method in ("Awq", "GPTQ", "SmoothQuant")


def test_anchor_and_special_defaults():
    cfg = load_config(EXAMPLES / "llmc" / "awq_w4a16_opencompass.yaml")
    assert cfg.calib.seed == cfg.base.seed == 42  # &seed / *seed
    special = cfg.quant.special_with_defaults()
    assert special["weight_clip"] is True and special["trans_version"] == "v2"
    assert cfg.opencompass.max_num_workers == 8
    assert cfg.positions() == ["pretrain", "transformed", "fake_quant"]


def test_gptq_token_consist_maps_to_fidelity():
    cfg = load_config(EXAMPLES / "llmc" / "gptq_w4a16.yaml")
    assert cfg.eval[0].fidelity_top_k() == 64


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BAD = """\
base:
    seed: &seed 42
model:
    path: /m
calib:
    name: pileval
    path: /c
    seed: *seed
eval:
    type: vqa
    name: wikitext2
    path: /e
    seq_lem: 2048
quant:
    method: Awq
    weight:
        bit: 12
        group_size: 128
    special:
        weight_clp: False
    kvcache:
        bit: 8
save:
    save_lightllm: True
"""


def test_all_problems_reported_with_lines_and_suggestions(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, BAD))
    probs = {p.path: p for p in info.value.problems}
    assert probs["eval.seq_lem"].line == 13
    assert "did you mean 'seq_len'" in probs["eval.seq_lem"].message
    assert "llmc's eval types acc, code, vqa, video_gen is not supported yet" in probs["eval.type"].message and probs["eval.type"].line == 10
    assert probs["quant.weight.bit"].line == 17
    assert "did you mean 'weight_clip'" in probs["quant.special"].message
    assert "required key is missing" in probs["quant.kvcache.method"].message and probs["quant.kvcache.method"].line == 21
    assert "llmc's real-quant exports" in probs["save.save_lightllm"].message
    assert len(info.value.problems) == 6


def test_cross_section_rules(tmp_path):
    text = "model: {path: /m}\neval: {eval_pos: [fake_quant], name: custom, path: /e}\n" \
           "quant: {method: GPTQ}\nopencompass: {cfg_path: x.py}\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    msg = str(info.value)
    assert "needs calibration data" in msg and "save.save_trans" in msg


def test_unknown_method_and_unsupported_method(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'GPTQ'"):
        load_config(_write(tmp_path, "model: {path: /m}\nquant: {method: GPTQQ}\n"))
    with pytest.raises(ConfigError, match="llmc's SpQR method is not supported yet"):
        load_config(_write(tmp_path, "model: {path: /m}\nquant: {method: SpQR}\n"))


def test_missing_path_without_download(tmp_path):
    with pytest.raises(ConfigError, match="download: false but no path"):
        load_config(_write(tmp_path, "model: {path: /m}\neval: {name: wikitext2}\n"))


def test_task_errors(tmp_path):
    text = "model: {path: /m}\ntasks:\n  - {name: a, type: multiple_choice, path: x, contxt_field: c}\n" \
           "  - {name: b, type: nope}\n  - {name: c, type: humaneval, n_samples: 1, k: [1, 10]}\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    msg = str(info.value)
    assert "did you mean 'context_field'" in msg
    assert "unknown task type" in msg
    assert "exceeds n_samples" in msg


def test_overrides_are_typed(tmp_path):
    cfg = load_config(EXAMPLES / "llmc" / "gptq_w4a16.yaml",
                      ["eval.seq_len=512", "quant.special.actorder=false", "model.path=/other", "runner.max_num_workers=2"])
    assert cfg.eval[0].seq_len == 512 and cfg.quant.special["actorder"] is False
    assert cfg.model.path == "/other" and cfg.runner.max_num_workers == 2
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert apply_overrides({"eval": [{"bs": 1}]}, ["eval.0.bs=4"]) == {"eval": [{"bs": 4}]}


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_config_error_exit_code_2_no_traceback(tmp_path, capsys):
    code = main(["run", str(_write(tmp_path, BAD)), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "6 problems" in err
    assert not (tmp_path / "run").exists()  # nothing is created before the config is valid


def test_a_typo_in_a_generate_only_eval_block_is_reported(tmp_path):
    """llmc's generate_only eval blocks become tasks; a key no eval block has is reported, never dropped."""
    text = "model: {path: /m}\neval: {type: generate_only, name: custom_gen, path: /e, max_new_tokns: 8}\n"
    with pytest.raises(ConfigError, match="unknown key 'max_new_tokns'"):
        load_config(_write(tmp_path, text))


def test_a_set_base_seed_seeds_the_tasks_too(tmp_path):
    """base.seed seeds everything random in a run: a task without its own seed takes it; without base.seed in
    the config, tasks keep lm-eval's 1234; a task's own seed wins."""
    tasks = "tasks: [{type: generate, name: g, path: /d}, {type: generate, name: h, path: /d, seed: 5}]\n"
    cfg = load_config(_write(tmp_path, "base: {seed: 7}\nmodel: {path: /m}\n" + tasks))
    assert [t.seed for t in cfg.tasks] == [7, 5]
    cfg = load_config(_write(tmp_path, "model: {path: /m}\n" + tasks))
    assert [t.seed for t in cfg.tasks] == [1234, 5]
