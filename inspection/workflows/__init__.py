"""What a user runs end to end: train (fit, calibrate, evaluate, save), evaluate a test split, score folders
(locally or on Ray), write a report, recalibrate. Imports everything below it; never `bench/`, `cli` or the app."""
