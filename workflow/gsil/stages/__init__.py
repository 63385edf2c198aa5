"""One module per workflow stage. Each exposes `add_arguments(parser)` and `run(args)`; `gsil.cli` dispatches."""
