"""What a person sees of one image: its score and verdict, the heatmap and defect boxes on the original, and the
pictures drawn from them. Imports `model/` and below; never `methods/`, `registry`, `workflows/` or the app."""
