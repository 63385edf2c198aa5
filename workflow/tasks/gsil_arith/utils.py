"""lm-eval hooks of the gsil_arith tasks; the extraction logic lives in gsil.evaluation.answers (tested there)."""

from gsil.evaluation.answers import INVALID, extract_flexible, extract_strict, gold_answer


def _apply(extractor, resps, docs):
    # resps: one list of responses per document (several when the task repeats)
    return [[extractor(text) or INVALID for text in doc_resps] for doc_resps in resps]


def strict_filter(resps, docs):
    return _apply(extract_strict, resps, docs)


def flexible_filter(resps, docs):
    return _apply(extract_flexible, resps, docs)


def process_results(doc, results):
    # results: the filtered answer of this document (the filter already normalised it)
    return {"exact_match": float(results[0] == gold_answer(doc["answer"]))}
