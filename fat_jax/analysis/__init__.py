"""Analyses of a run: CO diagnostics, noise evaluation, feature analysis, loss landscapes, shortcut
removal, and the evaluators launch's modes run."""
