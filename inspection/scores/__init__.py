"""What is computed from scores and maps alone (NumPy): metrics, thresholds, defect regions."""
