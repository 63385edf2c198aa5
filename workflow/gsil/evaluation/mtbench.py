"""MT-Bench: the model answers two-turn questions with its chat template; a judge rates every turn 1 to 10.

Questions: the suite's own demo file (workflow/tasks/mtbench/questions.jsonl), any JSONL file with the same
fields, or the Hub's MT-Bench prompts (paper profile; dataset id in the config). The grading prompt below is
written for this suite: one prompt per turn; for turn 2 the judge sees the whole conversation and rates only the
second reply; a reference answer, where the question has one (maths, reasoning, coding), is shown as a guide to
correctness. The score is the mean rating over every (question, turn) with a parsable rating.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gsil.evaluation.judge import parse_rating
from gsil.evaluation.stats import mean_and_stderr
from gsil.evaluation.suite_tasks import suite_tasks_dir
from gsil.io import iter_jsonl
from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")

JUDGE_SYSTEM = "You are a careful and impartial reviewer of replies written by AI assistants."

_CRITERIA = (
    "Judge the reply on correctness, helpfulness, relevance to what was asked, depth and appropriate level of "
    "detail, and clarity. Do not reward length for its own sake, and do not let the assistant's tone or "
    "confidence sway you. A reply that is wrong on the main point cannot score above 4."
)
_REFERENCE_NOTE = (
    "A reference answer is provided. Use it to check correctness, but accept replies that reach the same result "
    "by a different valid route."
)
_FORMAT = (
    "First explain your assessment in a few sentences. Then give your rating as a whole number from 1 (worst) "
    "to 10 (best), written on the last line in exactly this form: [[rating]] - for example [[7]]."
)


def grading_messages(question: dict[str, Any], answers: list[str], turn: int) -> list[dict[str, str]]:
    """The judge prompt that rates the assistant's reply at `turn` (1 or 2) of `question`."""
    if turn not in (1, 2):
        raise ValueError(f"MT-Bench turns are 1 and 2, got {turn}")
    lines = []
    if turn == 1:
        lines.append("Rate the quality of the AI assistant's reply to the user's request below.")
    else:
        lines.append("Below is a two-turn conversation between a user and an AI assistant. Rate only the "
                     "quality of the assistant's SECOND reply, taking the first exchange into account as context.")
    lines.append(_CRITERIA)
    references = question.get("reference") or []
    reference = references[turn - 1] if len(references) >= turn else None
    if reference:
        lines.append(_REFERENCE_NOTE)
    lines.append(_FORMAT)
    lines.append("")
    for index in range(turn):
        lines.append(f"### User (turn {index + 1})\n{question['turns'][index]}")
        lines.append(f"### Assistant (turn {index + 1})\n{answers[index]}")
    if reference:
        lines.append(f"### Reference answer for turn {turn}\n{reference}")
    lines.append(f"### End of conversation. Now rate the assistant's reply in turn {turn}.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(lines)}]


def _validate_question(row: dict[str, Any], where: str) -> dict[str, Any]:
    turns = row.get("turns")
    if not isinstance(turns, list) or len(turns) != 2 or not all(isinstance(t, str) and t for t in turns):
        raise GsilError(f"{where}: 'turns' must be a list of two non-empty strings")
    reference = row.get("reference")
    if reference is not None and not (isinstance(reference, list) and len(reference) <= 2
                                      and all(isinstance(r, str) for r in reference)):
        raise GsilError(f"{where}: 'reference' must be a list of at most two strings (per turn) or absent")
    return {"question_id": str(row.get("question_id", where)), "category": row.get("category", "unknown"),
            "turns": turns, "reference": reference or None}


def read_question_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise GsilError(f"MT-Bench question file {path} does not exist")
    questions = [_validate_question(row, where) for where, row in iter_jsonl(path)]
    if not questions:
        raise GsilError(f"MT-Bench question file {path} holds no questions")
    return questions


def load_questions(protocol: dict[str, Any]) -> list[dict[str, Any]]:
    source = protocol["questions"]
    if source == "demo":
        questions = read_question_file(suite_tasks_dir() / "mtbench" / "questions.jsonl")
    elif source == "hub":
        from gsil.evaluation.harness import _is_offline_failure, offline_error

        try:
            import datasets

            rows = datasets.load_dataset(protocol["hub_dataset"], split=protocol["hub_split"])
        except Exception as err:
            if _is_offline_failure(err):
                raise offline_error(protocol["hub_dataset"], "mtbench", err) from err
            raise GsilError(f"cannot load MT-Bench prompts {protocol['hub_dataset']}: {err}") from err
        # HuggingFaceH4/mt_bench_prompts: prompt (2 turns), prompt_id, category, reference
        questions = [_validate_question({"question_id": row.get("prompt_id", i), "category": row.get("category"),
                                         "turns": row.get("prompt") or row.get("turns"),
                                         "reference": row.get("reference") or None},
                                        f"{protocol['hub_dataset']} row {i}") for i, row in enumerate(rows)]
    else:
        questions = read_question_file(Path(source))
    if protocol.get("num_questions"):
        questions = questions[: int(protocol["num_questions"])]
    return questions


def answer_questions(lm, questions: list[dict[str, Any]], protocol: dict[str, Any]) -> list[list[str]]:
    """Both turns' answers of the model, turn 2 conditioned on its own turn-1 answer."""
    from gsil.evaluation.harness import generate_chat

    gen_kwargs = {"until": [], "max_gen_toks": int(protocol["max_gen_toks"]),
                  "do_sample": float(protocol["temperature"]) > 0, "temperature": float(protocol["temperature"])}
    system = [{"role": "system", "content": protocol["system_instruction"]}] if protocol.get("system_instruction") else []
    first = generate_chat(lm, [system + [{"role": "user", "content": q["turns"][0]}] for q in questions], gen_kwargs)
    second = generate_chat(lm, [system + [{"role": "user", "content": q["turns"][0]},
                                          {"role": "assistant", "content": a},
                                          {"role": "user", "content": q["turns"][1]}]
                                for q, a in zip(questions, first)], gen_kwargs)
    return [[a, b] for a, b in zip(first, second)]


def grade(judge, questions: list[dict[str, Any]], answers: list[list[str]]) -> tuple[list[dict], dict[str, Any]]:
    """Judge every turn; returns per-turn rows and the summary (score = mean over parsable ratings)."""
    from tqdm.auto import tqdm

    rows = []
    for question, answer in tqdm(list(zip(questions, answers)), desc="judging MT-Bench"):
        for turn in (1, 2):
            judgment = judge.judge(grading_messages(question, answer, turn), parse_rating)
            rows.append({"question_id": question["question_id"], "category": question["category"], "turn": turn,
                         "question": question["turns"][turn - 1], "answer": answer[turn - 1],
                         "rating": judgment.verdict, "judge_answer": judgment.raw, "attempts": judgment.attempts,
                         "unparsable": judgment.unparsable, "cached": judgment.cached})
    rated = [r["rating"] for r in rows if r["rating"] is not None]
    if not rated:
        raise GsilError(f"MT-Bench: the judge gave no parsable rating in {len(rows)} judgments "
                        f"({judge.stats['unparsable_answers']} unparsable answers)")
    score, stderr = mean_and_stderr(rated)
    summary = {"score": score, "stderr": stderr, "rated": len(rated), "judgments": len(rows),
               "unrated": len(rows) - len(rated)}
    for turn in (1, 2):
        turn_ratings = [r["rating"] for r in rows if r["turn"] == turn and r["rating"] is not None]
        summary[f"turn{turn}"] = sum(turn_ratings) / len(turn_ratings) if turn_ratings else None
    by_category: dict[str, list[float]] = {}
    for r in rows:
        if r["rating"] is not None:
            by_category.setdefault(r["category"], []).append(r["rating"])
    summary["by_category"] = {c: sum(v) / len(v) for c, v in sorted(by_category.items())}
    return rows, summary
