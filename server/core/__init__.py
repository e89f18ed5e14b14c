"""The completion core: documents and positions, the prompt and its budget, repository context, one completion,
the generateFunction target and body (verified by the docstring's examples in a sandbox), the acceptance log's
format.

The language server (`intarsia.server.lsp`), the CLI and training (`intarsia.training`) all build and run
completions through this package, so a suggestion is the same wherever it is made. It imports only
`intarsia.grammars` and `intarsia.model`: no pygls, no LSP types, no event loop.
"""
