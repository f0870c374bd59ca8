"""Multiple-choice prompting and answer extraction as the STTM authors do it (``llava/eval/metric_*.py`` and
their data loaders in github.com/HYUNJS/STTM), shared by our lmms-eval tasks."""

from __future__ import annotations

import re

# The authors' list. In their code two pairs lack a comma between them and Python joins each pair into one
# string that never occurs, so those four prefixes are never stripped. Kept as it behaves, for the same answers.
ANSWER_PREFIXES = [
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
]
LETTERS = "ABCDEF"


def option_prompt(num_options: int) -> str:
    """The authors' instruction, with the letter list of the question ("(A, B, C, or D)")."""
    letters = ", ".join(LETTERS[: num_options - 1]) + f", or {LETTERS[num_options - 1]}"
    return (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        f"Respond with only the letter ({letters}) of the correct option."
    )


def prompt(question: str, options: list[str], cue: str = "The best answer is:") -> str:
    """Instruction, question, one lettered option per line, then the answer cue."""
    return "\n".join([option_prompt(len(options)), question, *options, cue])


def extract_answer_letter(response: str, letters: str = "ABCD") -> str:
    """The first option letter anywhere in ``response`` once the known prefixes are removed, or "" (the STTM
    authors' ``extract_characters_regex``; so "Based on the video…" answers "B")."""
    text = response.strip()
    for prefix in ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    found = re.search(f"[{letters}]", text)
    return found[0] if found else ""
