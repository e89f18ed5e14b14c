"""Intarsia's serving side: the completion core (`core`), the language server (`lsp`) and the command line (`cli`,
the composition root that nothing imports)."""
