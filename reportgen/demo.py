"""The demo dataset: colour photos bundled with scikit-image, laid out as an ImageFolder tree (no download).

``python -m reportgen.demo DEST`` writes them; ``make demo`` then runs ``configs/demo.yaml`` on them. Two photos
sit in class folders named after their ImageNet class (so the report can mark predictions right or wrong),
the others are unlabelled at the root, and one deliberately corrupt file shows how a bad image is skipped
and listed in the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

__all__ = ["DEMO_PHOTOS", "write_demo_images"]

# scikit-image loader name → path in the demo folder (all ship inside the scikit-image wheel).
DEMO_PHOTOS = {
    "chelsea": "Egyptian cat/chelsea.png",
    "coffee": "espresso/coffee.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.png",
    "stereo_motorcycle": "motorcycle.png",
}
CORRUPT_NAME = "corrupt-example.jpg"


def write_demo_images(dest: Path) -> list[Path]:
    """Write the demo photos (and one corrupt file) under ``dest``; existing identical files are left alone."""
    import skimage.data

    dest = Path(dest)
    written = []
    for loader, rel in DEMO_PHOTOS.items():
        path = dest / rel
        if not path.exists():
            data = getattr(skimage.data, loader)()
            if loader == "stereo_motorcycle":
                data = data[0]  # (left, right, disparity): the left frame
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data).convert("RGB").save(path)
        written.append(path)
    corrupt = dest / CORRUPT_NAME
    if not corrupt.exists():
        corrupt.write_bytes(b"this is not a JPEG: it shows how reportgen skips and lists a file it cannot decode\n")
    written.append(corrupt)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo-images")
    paths = write_demo_images(target)
    print(f"demo images: {len(paths)} files in {target}")
