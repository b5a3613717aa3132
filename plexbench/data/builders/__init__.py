"""plexbench's own TFDS builders for the embedded datasets.

Each builder is a real `tfds.core.GeneratorBasedBuilder` prepared once into the TFDS data dir
(`plexbench data prepare NAME`), then read like any TFDS dataset. The classes are created with
`skip_registration=True`, so they never clash with TFDS's own registered builders of the same name
(TFDS registers a `fashion_mnist` builder too); `plexbench.data.prepare` finds them through
`DatasetInfo.builder` ("module:Class"). Importing these modules imports tensorflow_datasets.
"""
