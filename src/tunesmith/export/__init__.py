"""`tunesmith export`: a finished run as a merged Hugging Face model, a PEFT adapter, a GGUF file or an Ollama
model, each checked for parity with the fine-tuned model before it is reported as done (see docs/export.md).

    from tunesmith.export import export
    report = export("runs/support-bot", "gguf", "exports/support-bot-gguf", gguf_type="q8_0")

Heavy imports happen inside the functions, so importing this package stays fast.
"""

from __future__ import annotations

from pathlib import Path

FORMAT_NAMES = ("merged", "adapter", "gguf", "ollama")


def export(run_dir: str | Path, fmt: str, out: str | Path, dtype: str | None = None, gguf_type: str | None = None,
           force: bool = False) -> dict:
    """Export the run in `fmt` (merged | adapter | gguf | ollama) to the folder `out`.

    dtype (merged only): auto (the base's dtype) | fp32 | bf16 | fp16. gguf_type (gguf, ollama): f16 (default) |
    q8_0 | bf16 | f32. Returns the parity report, also written to `out/parity.json`; raises
    `tunesmith.export.parity.ParityError` (nothing written) when the export does not reproduce the model.
    """
    from tunesmith.export.api import export_run

    return export_run(run_dir, fmt, out, dtype=dtype, gguf_type=gguf_type, force=force)


def verify(run_dir: str | Path, export_dir: str | Path) -> dict:
    """Run the parity check again on an existing export folder; returns the report (`report["passed"]`)."""
    from tunesmith.export.api import verify_export

    return verify_export(run_dir, export_dir)
