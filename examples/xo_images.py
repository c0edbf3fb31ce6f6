"""Write a few test images of the built-in X-versus-O dataset as PNG files, for `cnnc predict`.

    python examples/xo_images.py OUT_DIR [--count 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from cnnc.datasets import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()
    test = load_dataset("xo", "test")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for index in range(args.count):
        label = test.classes[test.labels[index]]
        path = args.out_dir / f"{index:02d}-{label}.png"
        Image.fromarray(test.images[index, 0]).save(path)
        print(path)


if __name__ == "__main__":
    main()
