"""The training loop shared by `gsil sft` and `gsil align`.

settings    the hyperparameter flags, resolved settings and the global-batch layout
data        examples, the seeded data plan, micro-batch collation
examples    records -> encoded examples, with counts of what was truncated, skipped or dropped
reference   the reference file's contract with align (sha256, ids, tokenization, token counts)
scoring     summed log-probs of a frozen model (the reference-logps stage)
objectives  SFT's token-mean NLL and the pairwise objective over the loss registry
optim       optimizers and warmup + linear / cosine / constant schedules
loop        `train()`: accelerate, exact gradient accumulation, SIGTERM, metrics, final save; `TrainHooks`
checkpoint  `<output>.checkpoint/`: save (beside or in place), resume (fingerprint, metrics restored), discard
"""
