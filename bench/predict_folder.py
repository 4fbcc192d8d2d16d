"""Peak memory and time of `python -m inspection predict --report` over a folder of many images.

Trains a model on the built-in demo dataset (PatchCore on EfficientNet-Lite0, default settings), writes a folder
of N generated images (default 500, 1024×1024 JPEG), runs `predict --report` on it in a fresh process, runs it
again (every image skipped: resumed), and runs it on a folder a tenth as large, for comparison. Writes
`predict_folder.json` and `predict_folder.md` into --out (default: this folder).

    python bench/predict_folder.py [--images 500] [--side 1024] [--out bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from inspection.bench.run import environment_record, folder_memory, folder_memory_markdown
from inspection.data.demo import generate_demo_dataset
from inspection.workflows.train import train

METHOD, PARAMS = "patchcore", {}  # the default model of the app's one-click training


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images in the folder (default 500)")
    parser.add_argument("--side", type=int, default=1024, help="their side in pixels (default 1024)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="where the results go")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="predict-folder-"))
    try:
        demo = generate_demo_dataset(scratch / "demo")
        model_path = scratch / "model.safetensors"
        print(f"training {METHOD} on the demo dataset …", file=sys.stderr, flush=True)
        train(METHOD, PARAMS, str(demo), None, str(model_path), evaluate_test=False)
        print(f"predict over {args.images} images of {args.side}×{args.side} …", file=sys.stderr, flush=True)
        result = {"model": f"{METHOD} (efficientnet_lite0, default settings) trained on the demo dataset",
                  **folder_memory(model_path, args.images, args.side, demo, scratch)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    environment = environment_record()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict_folder.json").write_text(json.dumps({"environment": environment, **result}, indent=2))
    (out / "predict_folder.md").write_text(folder_memory_markdown(result, environment))
    print((out / "predict_folder.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
