"""What the training loop optimises: SFT's token-mean NLL, or a pairwise loss from the registry.

An objective turns a collated micro-batch into (summed loss, per-example records) and a step's records into the
metrics row. The pairwise objective looks its loss up by name once, at construction; nothing below branches on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gsil.training.data import PairExample, SFTExample, collate_pairs, collate_sft

PAIR_RECORD_FIELDS = ("losses", "positive_term", "negative_term", "rewards_positive", "rewards_negative")


class PairObjective:
    """SPIN, every GSIL loss and DPO: policy log-probs of [positives; negatives] from ONE forward pass, reference
    log-probs from the precomputed file carried by each example.

    `kind` is the pair kind trained on (selfplay or preference; default: the one the loss is registered for); it
    only names the logged per-side metrics (`gsil.losses.pair_metric_names`)."""

    def __init__(self, loss_name: str, *, beta: float, gamma: float, pad_token_id: int, full_logits: bool = False,
                 layout: str = "separate", kind: str | None = None, start_gap: str = "off",
                 reference_path: str = "the reference file"):
        from gsil.losses import LOSS_INFO, get_loss, pair_metric_names
        from gsil.tokenization import pad_batch

        self.loss_name = loss_name
        self.loss_fn = get_loss(loss_name)
        self.kind = kind or LOSS_INFO[loss_name].data
        names = pair_metric_names(self.kind)
        self.progress_keys = ("loss", names["rewards/positive"], names["rewards/negative"])
        self.beta, self.gamma = beta, gamma
        self.pad_token_id = pad_token_id
        self.full_logits = full_logits
        self.layout = layout  # "shared-prompt" (gsil.packing) or "separate"; see gsil.packing.resolve_pair_layout
        self._pad_batch = pad_batch
        self.name = f"align[{loss_name}]"
        self.start_gap = start_gap  # gsil.training.numerics.START_GAPS: what an offset Δ at the start does
        self.reference_path = reference_path

    def describe(self) -> dict:
        return {"loss": self.loss_name, "beta": self.beta, "gamma": self.gamma}

    def collate(self, examples: Sequence[PairExample]) -> dict:
        return collate_pairs(examples, self.pad_token_id, self._pad_batch, layout=self.layout)

    def policy_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from gsil.logprobs import packed_pair_logps, sequence_logps

        kwargs = {"full_logits": True} if self.full_logits else {}
        if "packed" in batch:
            logps, _ = packed_pair_logps(model, batch["packed"], **kwargs)
        else:
            logps, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], **kwargs)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]

    def forward(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy_positive, policy_negative = self.policy_logps(model, batch)
        out = self.loss_fn(policy_positive, policy_negative, batch["reference_positive"], batch["reference_negative"],
                           beta=self.beta, gamma=self.gamma)
        record = {name: getattr(out, name).detach() for name in PAIR_RECORD_FIELDS}
        record["policy_positive"] = policy_positive.detach().float()
        record["policy_negative"] = policy_negative.detach().float()
        record["reference_positive"] = batch["reference_positive"].detach().float()
        record["reference_negative"] = batch["reference_negative"].detach().float()
        return out.losses.sum(), record

    def summarise(self, records: dict[str, torch.Tensor]) -> dict:
        from gsil.losses import LossOutput, loss_metrics

        out = LossOutput(**{name: records[name] for name in PAIR_RECORD_FIELDS})
        return loss_metrics(out, records["policy_positive"], records["policy_negative"], kind=self.kind)

    def check_start(self, records: dict[str, torch.Tensor]) -> dict:
        """The first step's policy log-probs come from the starting weights, which the reference scored: their gap
        is Δ's starting point and must be ~0 (gsil.training.numerics.start_gap). Returns it for the metrics row;
        warns or raises (`start_gap`) when it is an offset."""
        import logging

        from gsil.logutil import GsilError
        from gsil.training.numerics import START_GAP_TOLERANCE, is_offset, start_gap

        if self.start_gap == "off":
            return {}
        gap = start_gap(torch.cat([records["policy_positive"], records["policy_negative"]]).tolist(),
                        torch.cat([records["reference_positive"], records["reference_negative"]]).tolist())
        figures = {"start_gap": gap["mean"], "start_gap_se": gap["se"]}
        if not is_offset(gap):
            return figures
        message = (f"Δ does not start at 0: before any update the policy's log-probs are {gap['mean']:+.3f} nats per "
                   f"sequence (s.e. {gap['se']:.3f}, largest {gap['max_abs']:.3f}, {gap['n']} sequences) away from "
                   f"the reference's in {self.reference_path}, so the rewards start at {self.beta * gap['mean']:+.4f} "
                   f"(β = {self.beta}) instead of 0 (tolerance {START_GAP_TOLERANCE} nats). The reference was scored "
                   f"from other weights than --model, or with other numerics than this run computes with (on a GPU, "
                   f"`gsil check-gpu`'s numerics check names the kernel that differs)")
        if self.start_gap == "fail":
            raise GsilError(message + "; --start-gap warn trains anyway")
        logging.getLogger("gsil.training").warning("%s", message)
        return figures

    def describe_nonfinite(self, step: int, examples: Sequence[PairExample], loss_sum, record: dict) -> str:
        rows = []
        for i, ex in enumerate(examples):
            values = {key: round(float(record[key][i]), 4) for key in
                      ("losses", "policy_positive", "policy_negative", "reference_positive", "reference_negative")}
            rows.append(f"{ex.id}: {values}")
        return (f"non-finite {self.loss_name} loss ({float(loss_sum)}) at optimizer step {step}; "
                f"batch ids and values: " + "; ".join(rows))


class SFTObjective:
    """Token-mean negative log-likelihood of the responses (prompt tokens masked)."""

    progress_keys = ("loss",)
    name = "sft"

    def __init__(self, *, pad_token_id: int):
        from gsil.tokenization import pad_batch

        self.pad_token_id = pad_token_id
        self._pad_batch = pad_batch

    def describe(self) -> dict:
        return {"loss": "sft"}

    def collate(self, examples: Sequence[SFTExample]) -> dict:
        return collate_sft(examples, self.pad_token_id, self._pad_batch)

    def forward(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from gsil.logprobs import sequence_logps

        # Summed NLL per sequence; the loop divides by the step's response-token count (its "weight").
        logps, counts = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        nll = -logps.float()
        record = {"nll": nll.detach(), "tokens": counts.detach().float()}
        return nll.sum(), record

    def check_start(self, records: dict[str, torch.Tensor]) -> dict:
        return {}  # no reference: nothing to start at 0

    def summarise(self, records: dict[str, torch.Tensor]) -> dict:
        tokens = float(records["tokens"].sum())
        return {"loss": float(records["nll"].sum()) / tokens if tokens else float("nan"),
                "response_tokens": int(tokens)}

    def describe_nonfinite(self, step: int, examples: Sequence[SFTExample], loss_sum, record: dict) -> str:
        rows = [f"{ex.id}: nll={float(record['nll'][i]):.4g}" for i, ex in enumerate(examples)]
        return (f"non-finite SFT loss ({float(loss_sum)}) at optimizer step {step}; batch ids and values: "
                + "; ".join(rows))
