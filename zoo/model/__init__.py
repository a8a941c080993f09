"""The unified model and its parts.

`unified` (UnifiedVLM, the LightningModule) and `variants` (the study's families); what it is made of:
`backbone` (the language model), `adapters` (projectors, heads, image positions), `objectives`,
`feedback` (what is fed back for written image tokens), `settings` (optimiser, evaluation decoding);
how it reads and writes: `processor` (Samples -> batches), `tokenizer`, `code_cache` (pre-encoded tokens
of frozen spaces), `generate` (decoding); `callbacks` for its training runs.

Nothing is imported here: `import zoo.model.unified` costs only what that module needs.
"""
