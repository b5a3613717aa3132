"""Tasks: kinds (Python modules in `plexbench.tasks.kinds`), instances (YAML in tasks/), suites
(YAML in tasks/suites/) and the runner that evaluates a suite over models into a results directory.

Importing this package is cheap (no TensorFlow, no JAX)."""
