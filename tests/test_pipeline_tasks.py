"""`accbench run` with downstream tasks of every kind on a tiny model: the tasks stage end to end."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from accbench.cli import main

EXAMPLES = Path(__file__).parent.parent / "examples"
SECRET = "sk-pipeline-test-0123456789-SECRET"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class ConstantJudge(ThreadingHTTPServer):
    """An OpenAI-compatible judge on 127.0.0.1 that rates every answer [[6]]."""

    def __init__(self) -> None:
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(inner):
                body = json.loads(inner.rfile.read(int(inner.headers["Content-Length"])))
                self.requests += 1
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": "Fine. [[6]]"}}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                inner.send_response(200)
                inner.send_header("Content-Type", "application/json")
                inner.send_header("Content-Length", str(len(data)))
                inner.end_headers()
                inner.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def judge(monkeypatch):
    monkeypatch.setenv("ACCBENCH_PIPE_JUDGE_KEY", SECRET)
    server = ConstantJudge()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def chat_model_dir(tiny_model_dir, tmp_path):
    out = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def test_all_task_kinds_in_one_run(tmp_path, chat_model_dir, eval_txt, judge):
    cfg = {
        "model": {"path": str(chat_model_dir), "torch_dtype": "float32"},
        "eval": {"eval_pos": ["pretrain"], "name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 4},
        "tasks": [
            {"name": "mc", "type": "multiple_choice", "path": str(EXAMPLES / "data" / "mc_python.jsonl"), "limit": 5},
            {"name": "humaneval", "type": "humaneval", "limit": 2, "max_new_tokens": 8,
             "allow_code_execution": True, "timeout": 5},
            {"name": "mtbench", "type": "mtbench", "limit": 2, "max_new_tokens": 8,
             "judge": {"type": "openai", "model": "judge", "base_url": judge.url,
                       "api_key_env": "ACCBENCH_PIPE_JUDGE_KEY", "prompts": "accbench"}},
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", str(path), "-o", str(run)]) == 0
    res = json.loads((run / "results.json").read_text())
    tasks = {t["task"]: t for t in res["tasks"]}
    assert set(tasks) == {"mc", "humaneval", "mtbench"} and all(t["model"] == "pretrain" for t in tasks.values())
    # the fixture's random model on the first 5 items of mc_python (pinned: a scoring change moves it)
    assert tasks["mc"]["n"] == 5 and tasks["mc"]["metrics"]["acc"] == pytest.approx(0.2)
    assert tasks["mc"]["per_sample"]["acc"] == {"py0": 1.0, "py1": 0.0, "py2": 0.0, "py3": 0.0, "py4": 0.0}
    assert tasks["humaneval"]["n"] == 2 and tasks["humaneval"]["metrics"]["pass@1"] == 0.0  # a random model
    assert tasks["mtbench"]["metrics"]["score"] == 6.0 and judge.requests == 4  # 2 questions x 2 turns
    assert len(tasks["mc"]["per_sample"]["acc"]) == 5
    # the judge's key is never written anywhere in the run directory
    for f in run.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_bytes().decode("utf-8", "replace"), f

    # resume: nothing is recomputed, the judge is not paid twice
    assert main(["run", str(path), "-o", str(run), "--resume"]) == 0
    assert judge.requests == 4
    assert json.loads((run / "results.json").read_text())["tasks"] == res["tasks"]


def test_code_execution_needs_opt_in(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = {"model": {"path": str(tiny_model_dir)},
           "tasks": [{"name": "humaneval", "type": "humaneval", "limit": 1, "max_new_tokens": 4}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 2
    assert "allow_code_execution" in capsys.readouterr().err
