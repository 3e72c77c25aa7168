"""Text datasets for evaluation, calibration and training."""
