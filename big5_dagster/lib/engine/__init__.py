"""The model engine: loading (and the embedded model), chat rendering, sampling, generation,
option scoring, LoRA adapters, DExperts decoding, the vLLM engine, the respondent protocol."""
