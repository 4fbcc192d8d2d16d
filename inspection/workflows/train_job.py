"""The entry of a training process started by `train_in_process`: ``python -m inspection.workflows.train_job``.

A module of its own, so that the process imports the training and nothing else — not the app's page, as
multiprocessing's spawn would (it re-runs the parent's `__main__`, which under `streamlit run` is a page script).
"""

from inspection.workflows.train import serve_training_process

if __name__ == "__main__":
    serve_training_process()
