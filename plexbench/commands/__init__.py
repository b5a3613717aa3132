"""CLI subcommands, one module per area; see plexbench.cli."""
