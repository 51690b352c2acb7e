"""One run's per-case loop and what it needs: settings, setup, folds, records, the run folder's checks."""
