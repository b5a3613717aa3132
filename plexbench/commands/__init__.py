"""CLI subcommands, one module per area; see plexbench.cli."""

# Help texts of options that several subcommands share (defaults: plexbench.paths).
DATA_DIR_HELP = "TFDS data dir (default: $TFDS_DATA_DIR or ~/.cache/plexbench/tensorflow_datasets)"
STORE_HELP = "prediction store (default: $PLEXBENCH_STORE or ~/.cache/plexbench/predictions)"
