"""The ledger's HTTP API: Formance Ledger v2's routes over the core and the pipelines (an edge, like the CLI)."""

MAX_BODY_BYTES = 4 * 1024 * 1024  # a bulk of a few thousand transactions; larger ones are split by the caller
