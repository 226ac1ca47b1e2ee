"""Datasets that work offline: seeded synthetic images and ImageFolder directories.

Nothing here downloads. The synthetic set is class-conditional (a fixed low-frequency pattern
per class plus per-sample noise), so a model trained on it really learns and its loss falls,
which makes training records meaningful without shipping data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from cotrain.config import DatasetConfig, ImageFolderDatasetConfig, SyntheticDatasetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SyntheticImages(Dataset[tuple[torch.Tensor, int]]):
    """Deterministic (seed, index) -> (3×S×S float image, label)."""

    def __init__(self, num_samples: int, num_classes: int, image_size: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
        self._prototypes = torch.nn.functional.interpolate(
            coarse, size=(image_size, image_size), mode="bilinear", align_corners=False
        )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        label = index % self.num_classes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        noise = torch.randn(3, self.image_size, self.image_size, generator=g)
        return self._prototypes[label] + 0.5 * noise, label


def image_folder(root: str | Path, image_size: int) -> Dataset[tuple[torch.Tensor, int]]:
    """A torchvision ImageFolder resized to `image_size` and normalised with ImageNet statistics."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    folder: Dataset[tuple[torch.Tensor, int]] = datasets.ImageFolder(str(root), transform=transform)
    return folder


def build_dataset(config: DatasetConfig) -> Dataset[tuple[torch.Tensor, int]]:
    if isinstance(config, SyntheticDatasetConfig):
        return SyntheticImages(config.num_samples, config.num_classes, config.image_size, config.seed)
    if isinstance(config, ImageFolderDatasetConfig):
        return image_folder(config.root, config.image_size)
    raise TypeError(f"unknown dataset {config!r}")


def dataset_num_classes(config: DatasetConfig) -> int:
    """Number of classes without loading images (ImageFolder: count of class directories)."""
    if isinstance(config, SyntheticDatasetConfig):
        return config.num_classes
    return len(image_folder_classes(Path(config.root)))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder_classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_image_folder(root: Path) -> str | None:
    """Why `root` cannot be used as an ImageFolder, or None if it can. Cheap: no image decoding."""
    if not root.exists():
        return f"dataset directory {str(root)!r} does not exist"
    if not root.is_dir():
        return f"dataset path {str(root)!r} is not a directory"
    classes = image_folder_classes(root)
    if not classes:
        return f"dataset directory {str(root)!r} has no class sub-directories"
    empty = [c for c in classes if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (root / c).rglob("*"))]
    if empty:
        return f"dataset directory {str(root)!r}: class folder(s) without images: {', '.join(empty[:5])}"
    return None
