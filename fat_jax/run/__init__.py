"""A training run and its directory: the loop, its checkpoints, logs, lock, divergence checks, CO
guard, and `Run`, a finished directory as one value."""
