"""Reports of finished runs: figures, aggregates over runs, the summary, the report."""
