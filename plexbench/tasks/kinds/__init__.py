"""Task kinds, one module each; `plexbench.tasks.registry.load_kinds` imports them all."""
