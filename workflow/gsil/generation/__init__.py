"""Self-generation: a model's responses to the self-play prompts, the negatives of the next SPIN/GSIL round.

One interface, two backends:

* `Generator` (a protocol): `generate(prompts, on_batch=None, seeds=None) -> list[GenerationResult]`, where a prompt
  is the list of token ids produced by `gsil.tokenization.encode_prompt`, the function training and reference scoring
  use to encode the same prompt (BOS included exactly once where the tokenizer adds one). Passing ids (not text)
  makes the generated response continue exactly the tokens it will later be scored and trained after, and lets
  `--max-prompt-length` truncate the same way everywhere. `seeds` holds one sampling seed per prompt.
* `TransformersGenerator` (default, CPU and GPU): batched `model.generate` with the KV cache, prompts sorted by
  length (longest first, so the batch that needs the most memory runs first and padding is small), left padding,
  greedy or sampled, stopping at EOS and at the chat template's end-of-turn token.
* `VllmGenerator` (GPU): `vllm.LLM` + one `SamplingParams` per prompt, tensor parallel, imported only when chosen.
  `stream` queues ALL of the job's remaining prompts in the engine at once (vLLM's `LLMEngine.add_request`/`step`,
  the loop `LLM.generate` itself runs) and yields each result as its request finishes, so the engine never idles at
  a shard's tail and shards are still written as soon as they are complete. The request list and sampling arguments
  are built by pure functions (`vllm_requests`, `vllm_sampling_kwargs`) so they are tested without vLLM.

Large prompt sets run in shards of `shard_size` prompts (input order). Each finished shard is written atomically to
`<output>.shards/shard-00003.jsonl`; a killed run restarts with the shards that are not on disk. `plan.json` in
the shard folder fingerprints the inputs and settings, so shards of a different configuration are never mixed in.
Under `accelerate launch` (or torchrun) each process takes every WORLD_SIZE-th shard on its own GPU, and process 0
merges once all shard files exist. The merge checks that the ids are exactly the input ids (no duplicate, none
missing), writes the output in input order, then removes the shard folder.

Post-processing: the generated ids are cut at the first stop token, decoded without special tokens, and stripped of
surrounding whitespace. An empty generation is KEPT (the row's `generated` is ""), counted in the log and in the
sidecar `<output minus .jsonl>.meta.json`. Generation does not decide what to do with it: the trainer does (it may
keep it as a negative, which pushes the model away from stopping at once, or drop it and count it).

Seeds (`SEEDING`, recorded in the meta file): every prompt samples with its own seed, `prompt_seed(seed, id)` = the
first 32 bits of sha256(f"{seed}:{id}") masked to 31 bits, so a prompt's response depends only on (seed, its id,
the model, the settings): not on its shard, its batch, the other prompts, resuming or resharding. vLLM takes it as
the request's `SamplingParams.seed`. Hugging Face `generate` has no per-row generator, so the transformers backend
samples by the Gumbel-max trick instead: it decodes with argmax over the temperature/top-p-processed scores plus
Gumbel noise drawn from one `torch.Generator` per prompt (seeded with the prompt's seed), which is an exact sample
from the same distribution. The two backends use different noise, so their samples differ; each is reproducible.

Modules (like `gsil.training`, one job each; torch, transformers and vllm are imported only inside functions, so
`import gsil.generation` stays light for the CLI):

settings               `SamplingSettings`, `GenerateConfig` (the stage's flags), precision, per-prompt seeds
results                `GenerationResult`, the `Generator` protocol, stop tokens and post-processing
backends.transformers  `TransformersGenerator` (+ `PerPromptGumbelNoise`, length-sorted left-padded batches)
backends.vllm          `VllmGenerator` (+ the pure request / `SamplingParams` builders)
shards                 shard files, the shard plan, `DistributedInfo`, resume, the id check of the merge
meta                   the `.meta.json` sidecar
run                    `run_generation` (the stage driver) and `build_generator`

Only the names other modules and the tests import are re-exported here.
"""

from gsil.generation.backends.transformers import (
    PerPromptGumbelNoise,
    TransformersGenerator,
    left_pad,
    length_sorted_batches,
)
from gsil.generation.backends.vllm import (
    VLLM_EXTRA_HINT,
    VllmGenerator,
    import_vllm,
    result_from_vllm,
    vllm_requests,
    vllm_sampling_kwargs,
)
from gsil.generation.meta import meta_path_for
from gsil.generation.results import GenerationResult, Generator, clean_generation, split_at_stop, stop_token_ids_for
from gsil.generation.run import run_generation
from gsil.generation.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    SEEDING,
    GenerateConfig,
    SamplingSettings,
    prompt_seed,
    resolve_precision,
    torch_dtype,
)
from gsil.generation.shards import DistributedInfo, check_ids, shard_dir_for, shard_path, shard_ranges

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_SHARD_SIZE", "SEEDING", "VLLM_EXTRA_HINT",
    "DistributedInfo", "GenerateConfig", "GenerationResult", "Generator", "PerPromptGumbelNoise", "SamplingSettings",
    "TransformersGenerator", "VllmGenerator",
    "check_ids", "clean_generation", "import_vllm", "left_pad", "length_sorted_batches", "meta_path_for",
    "prompt_seed", "resolve_precision", "result_from_vllm", "run_generation", "shard_dir_for", "shard_path",
    "shard_ranges", "split_at_stop", "stop_token_ids_for", "torch_dtype", "vllm_requests", "vllm_sampling_kwargs",
]
