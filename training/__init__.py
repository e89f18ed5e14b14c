"""Retraining on a team's own codebase (`intarsia train`, `intarsia eval`).

- `crawl`: the files a repository's git tracks, filtered (vendored, generated, minified, binary, oversized,
  duplicates) and with secrets masked by detect-secrets; the repository is only read.
- `examples`: tree-sitter spans, random spans, docstring → body and accepted suggestions, rendered as the server
  renders prompts (same FIM format, budget split and repository context); train/held-out split by file.
- `trainer`: LoRA with peft on packed sequences, resumable checkpoints, CPU / CUDA / `accelerate launch`.
- `evaluate`: base vs adapted on held-out files through the serving pipeline; the promotion gate; reports.
- `run`: the whole command; trained adapters are versioned by `intarsia.model.trained.AdapterStore` and served
  at run time by the language server (never merged).
"""
