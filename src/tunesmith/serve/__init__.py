"""Serving a fine-tuned model: `tunesmith serve` (OpenAI-compatible HTTP), `predict` (a file in, a file out) and
`chat` (a terminal REPL) share one loader (`loading.py`) and one batched generation engine (`engine.py`)."""
