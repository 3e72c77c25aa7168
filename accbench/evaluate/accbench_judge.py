"""accbench's own MT-bench judge prompts (`judge.prompts: accbench`), kept as a named alternative to FastChat's.

The same rubric as MT-bench (a 1-10 rating written ``[[N]]``, reference-guided for math/reasoning/coding when a
reference exists), in accbench's own words and layout, read by accbench's strict parser (one whole number
1..10; several different ratings do not parse). Scores graded this way are not comparable with FastChat's.
"""

from __future__ import annotations

from accbench.evaluate.judge import Messages

PROMPT_NAME = "accbench-v1"
JUDGE_SYSTEM = "You are a fair and exacting reviewer of answers written by AI assistants."

_RUBRIC = ("Judge how well the assistant's answer serves the user: is it helpful, on topic, correct, deep enough, "
           "detailed where detail helps and creative where creativity fits? ")
_RUBRIC_REF = ("Judge above all whether the assistant's answer is correct, and then whether it is helpful. "
               "A reference answer is given: compare the assistant's answer with it and name any mistakes. ")
_VERDICT = ("Write a short, objective explanation first. Then give your rating of the answer on a scale from "
            "1 (useless) to 10 (excellent), as a whole number inside double square brackets, for example "
            "\"Rating: [[4]]\".")


def judge_prompt(turns: tuple[str, ...], answers: list[str], turn: int, reference: tuple[str, ...] | None) -> Messages:
    """The judge conversation for turn `turn` (0-based): the dialogue so far, references, and the rubric."""
    ref = reference if reference and turn < len(reference) else None
    parts = [(_RUBRIC_REF if ref else _RUBRIC)]
    if turn == 0:
        parts.append(_VERDICT + "\n")
        parts.append(f"<<< USER QUESTION >>>\n{turns[0]}\n")
        if ref:
            parts.append(f"<<< REFERENCE ANSWER >>>\n{ref[0]}\n")
        parts.append(f"<<< ASSISTANT ANSWER >>>\n{answers[0]}\n<<< END >>>")
    else:
        parts.append(f"Below is a conversation of {turn + 1} turns. Rate ONLY the assistant's answer in the last "
                     f"turn (turn {turn + 1}); the earlier turns are context. " + _VERDICT + "\n")
        for t in range(turn + 1):
            parts.append(f"<<< USER, TURN {t + 1} >>>\n{turns[t]}\n")
            if ref:
                parts.append(f"<<< REFERENCE ANSWER, TURN {t + 1} >>>\n{ref[t]}\n")
            parts.append(f"<<< ASSISTANT, TURN {t + 1} >>>\n{answers[t]}\n")
        parts.append("<<< END >>>")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n".join(parts)}]
