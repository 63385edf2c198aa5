"""The generation backends behind the one `gsil.generation.results.Generator` interface.

transformers  `TransformersGenerator`: batched Hugging Face `generate` (default; CPU and GPU)
vllm          `VllmGenerator`: vLLM offline inference, tensor parallel, one job-wide request queue (GPU)

Neither module imports torch, transformers or vllm at import time; `gsil.generation.run.build_generator` picks one.
"""
