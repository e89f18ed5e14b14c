"""The language server: LSP handlers (`server`), the protocol's and the wire's robustness (`protocol`,
`transport`), conversions (`convert`), the session (`session`), its engine (`host`) and model thread (`executor`),
settings (`settings`) and the typed-ahead cache (`cache`). It builds completions with `intarsia.server.core`.
"""
