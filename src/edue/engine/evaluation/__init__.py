"""Evaluation of a predictor on a run's split: the metrics files, per-case table,
referral figures and the distribution-shift study."""
