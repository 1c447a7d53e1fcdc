"""Stage 'cohort' and the data the trainer reads: participants manifest and importers, simulated cohort, splits, cross-validation folds, atlases, training cache."""
