"""plexbench: a reliability benchmark suite around Plex (Tran et al. 2022).

The code runs one way: data -> models -> inference -> metrics -> tasks -> reports -> CLI.
Importing the package is cheap: nothing here imports TensorFlow or JAX.
"""

__version__ = "0.1.0"

# Version of the per-example output format written by inference; part of every
# prediction-store key, so a change here invalidates old store entries.
OUTPUT_FORMAT_VERSION = 1
