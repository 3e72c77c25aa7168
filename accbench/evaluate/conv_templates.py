"""FastChat's conversation templates, by name, for models without a chat template (MT-bench answers).

FastChat's `gen_model_answer.py` builds each prompt with a conversation template (`one_shot` by default for a
model it does not know, `vicuna_v1.1` for Vicuna, ...): the user turn is appended, then an empty assistant
turn, and the template's `get_prompt()` is the text the model continues; the answer is cut at the template's
stop string (only when it occurs after the first character, as FastChat cuts it), stripped, and put in place
of the empty turn before the next user turn. The templates themselves are FastChat's own: they are taken from
an installed `fschat` package (FastChat asks to be imported rather than copied), so every template FastChat
has is available by the name FastChat gives it.
"""

from __future__ import annotations

from typing import Any

from accbench.errors import AccbenchError

INSTALL_HINT = "pip install 'accbench[fastchat]' (or pip install fschat): the templates are FastChat's own"


def get_template(name: str) -> Any:
    """A fresh FastChat Conversation named `name`; a clear error when fschat is missing or the name unknown."""
    try:
        from fastchat.conversation import conv_templates, get_conv_template
    except ImportError:
        raise AccbenchError(f"mtbench: conv_template: {name} needs FastChat's conversation templates",
                            INSTALL_HINT) from None
    if name not in conv_templates:
        import difflib

        near = difflib.get_close_matches(name, list(conv_templates), n=3, cutoff=0.5)
        raise AccbenchError(f"mtbench: conv_template: FastChat has no template named {name!r}",
                            f"use one of FastChat's names, e.g. {', '.join(near or ['one_shot', 'vicuna_v1.1'])}")
    return get_conv_template(name)


def check_template(name: str) -> None:
    """Fail before any model loads when the template cannot be had."""
    get_template(name)


def render(name: str, turns: tuple[str, ...] | list[str], answers: list[str]) -> str:
    """The prompt for turn len(answers)+1: earlier user turns with the model's own answers, then the next turn."""
    conv = get_template(name)
    for j in range(len(answers) + 1):
        conv.append_message(conv.roles[0], turns[j])
        conv.append_message(conv.roles[1], answers[j] if j < len(answers) else None)
    return conv.get_prompt()


def finish(name: str, text: str) -> str:
    """The answer as FastChat keeps it: cut at the template's stop string when it occurs past the start, stripped."""
    stop = get_template(name).stop_str
    if isinstance(stop, list):
        cuts = sorted(i for i in (text.find(s) for s in stop) if i > 0)
        if cuts:
            text = text[:cuts[0]]
    elif stop and text.find(stop) > 0:
        text = text[:text.find(stop)]
    return text.strip()
