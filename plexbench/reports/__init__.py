"""Reports: the reliability score, leaderboards (CSV, JSON, Markdown, LaTeX) and plots.

Everything here reads only results directories (docs/ARCHITECTURE.md, "results
directory") and the paper's published numbers; nothing imports JAX or TensorFlow, and
matplotlib is imported inside the plotting functions.

- `reliability_score.compute_score(long, preset=..., baseline=...)`: spec §7 score.
- `leaderboard.build_leaderboard(dirs, ...)` / `write_leaderboard(...)`: the tables.
- `plot_data` computes what a figure shows; `plots` draws it (Agg, serif, PDF + PNG).
- `paper_numbers`: the published numbers and their mapping to plexbench columns.
"""
