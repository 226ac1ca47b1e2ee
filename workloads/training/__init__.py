"""Training jobs: a controllable SGD loop over a DataLoader, with checkpoints and per-step records."""
