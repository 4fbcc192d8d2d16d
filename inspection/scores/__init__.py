"""What is computed from scores and maps alone (NumPy): metrics, thresholds, defect regions, histograms.
Imports only the ground (`errors`, `params`, `progress`, `device`, `outputs`)."""
