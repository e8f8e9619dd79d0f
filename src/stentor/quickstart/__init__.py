"""The offline end-to-end quickstart and its built-in corpus."""
