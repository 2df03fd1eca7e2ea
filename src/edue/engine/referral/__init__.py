"""Referral: the calibration file (thresholds, expert-unit maps and the shift gate),
the procedure that fits it, and the gate on encoder features with its Gaussian."""
