"""Packaging for linformer-pt: the package, its Hydra configs (shipped as package data) and CLIs."""
from setuptools import setup

setup(
    name="linformer-pt",
    version="0.1.0",
    description="Fairseq-style masked-LM pretraining framework for Linformer encoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        "linformer_pt",
        "linformer_pt.cli",
        "linformer_pt.data",
        "linformer_pt.models",
        "linformer_pt.modules",
        "linformer_pt.tasks",
        "linformer_pt.training",
        "linformer_pt.configs",
        "linformer_pt.hub",
        "linformer_pt.hub.transformers_code",
        "linformer_pt.sweeps",
        "linformer_pt.analysis",
    ],
    # The top-level configs/ folder is the package linformer_pt.configs, so that Hydra finds it
    # through pkg:// from an editable checkout, a wheel, or the Docker image alike.
    package_dir={"linformer_pt.configs": "configs"},
    package_data={"linformer_pt.configs": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
    install_requires=[
        "torch>=2.3",
        "hydra-core>=1.3.2,<1.4",
        "omegaconf>=2.3,<2.4",
        "datasets>=2.16",
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "numpy>=1.24",
        "tqdm>=4.64",
        "tensorboard>=2.12",
    ],
    extras_require={
        "wandb": ["wandb>=0.16"],
        "plot": ["matplotlib>=3.7"],
        "slurm": ["hydra-submitit-launcher>=1.2"],
        # Exports also load through transformers' Auto classes (hub/transformers_code/); its Trainer needs accelerate.
        "hf": ["transformers>=5.0", "accelerate>=1.1"],
        "dev": ["pytest>=7.4", "matplotlib>=3.7", "wandb>=0.16", "hydra-submitit-launcher>=1.2", "transformers>=5.0",
                "accelerate>=1.1"],
    },
    entry_points={
        "console_scripts": [
            "linformer-train=linformer_pt.cli.train:main",
            "linformer-preprocess=linformer_pt.cli.preprocess:main",
            "linformer-train-tokenizer=linformer_pt.cli.preprocess:main_tokenizer",
            "linformer-export=linformer_pt.cli.export:main",
            "linformer-eval=linformer_pt.cli.eval:main",
            "linformer-fill-mask=linformer_pt.cli.fill_mask:main",
            "linformer-sweep-report=linformer_pt.cli.sweep_report:main",
            "linformer-analyze=linformer_pt.cli.analyze:main",
            "linformer-predict=linformer_pt.cli.predict:main",
            "linformer-average-checkpoints=linformer_pt.cli.average:main",
            "linformer-convert-checkpoint=linformer_pt.cli.convert_checkpoint:main",
            "linformer-import=linformer_pt.cli.import_model:main",
        ],
    },
)
