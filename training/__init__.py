"""Retraining on a team's own codebase (`intarsia train`, `intarsia eval`).

- `crawl`: the files a repository's git tracks, filtered (vendored, generated, minified, binary, oversized,
  duplicates) and with secrets masked by detect-secrets; the repository is only read.
- `examples`: tree-sitter spans, random spans, docstring → body and accepted suggestions, rendered as the server
  renders prompts (same FIM format, budget split and repository context); train/held-out split by file.
- `trainer`: LoRA with peft on packed sequences, resumable checkpoints, CPU / CUDA / `accelerate launch`.
- `evaluate`: held-out samples of the kinds users complete, completed through the serving pipeline (cached
  prompts and results, short generations); reports.
- `gate`: the promotion decision, a paired seeded bootstrap of candidate vs served model per sample.
- `budget`: the time budget: what to train and evaluate in the time given, and when to stop.
- `run`: the whole command; trained adapters are versioned by `intarsia.model.trained.AdapterStore` and served
  at run time by the language server (never merged).
"""
