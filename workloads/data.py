"""Datasets that work offline: seeded synthetic images and ImageFolder directories.

Nothing here downloads. The synthetic set is class-conditional (a fixed low-frequency pattern
per class plus per-sample noise), so a model trained on it really learns and its loss falls,
which makes training records meaningful without shipping data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from cotrain.config import (
    DatasetConfig,
    DigitsDatasetConfig,
    ImageFolderDatasetConfig,
    SyntheticDatasetConfig,
)

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


DIGITS_CLASSES = 10


def digits_tensors(split: str, image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N×3×S×S float images in [-1, 1], N labels).

    The 8×8 images are upscaled bilinearly to `image_size` so torchvision CNNs (which downsample
    by 32) can run on them. `split` is a seeded, stratified 75/25 split, the same in every process
    with the same seed, so training and held-out evaluation never share an image.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    if split != "all":
        g = torch.Generator().manual_seed(seed)
        test_mask = torch.zeros(len(labels), dtype=torch.bool)
        for c in range(DIGITS_CLASSES):
            idx = (labels == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            test_mask[idx[: len(idx) // 4]] = True
        keep = test_mask if split == "test" else ~test_mask
        images, labels = images[keep], labels[keep]
    images = torch.nn.functional.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return (images.repeat(1, 3, 1, 1) - 0.5) / 0.5, labels


def rotate(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its own angle (bilinear, background = the images' minimum)."""
    from torchvision.transforms.functional import rotate as tv_rotate

    fill = float(images.min()) if images.numel() else 0.0
    return (
        torch.stack(
            [
                tv_rotate(img, float(a), interpolation=_bilinear(), fill=[fill])
                for img, a in zip(images, angles_deg, strict=True)
            ]
        )
        if len(images)
        else images
    )


def _bilinear() -> object:
    from torchvision.transforms import InterpolationMode

    return InterpolationMode.BILINEAR


def build_dataset(config: DatasetConfig) -> Dataset[tuple[torch.Tensor, int]]:
    if isinstance(config, SyntheticDatasetConfig):
        return SyntheticImages(config.num_samples, config.num_classes, config.image_size, config.seed)
    if isinstance(config, ImageFolderDatasetConfig):
        return image_folder(config.root, config.image_size)
    if isinstance(config, DigitsDatasetConfig):
        images, labels = digits_tensors(config.split, config.image_size, config.seed)
        return TensorPairs(images, labels)
    raise TypeError(f"unknown dataset {config!r}")


class TensorPairs(Dataset[tuple[torch.Tensor, int]]):
    """(image, label) pairs held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def dataset_num_classes(config: DatasetConfig) -> int:
    """Number of classes without loading images (ImageFolder: count of class directories)."""
    if isinstance(config, SyntheticDatasetConfig):
        return config.num_classes
    if isinstance(config, DigitsDatasetConfig):
        return DIGITS_CLASSES
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
