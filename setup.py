"""safecomp: output-centric safe-completion safety training in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="safecomp",
    version="0.1.0",
    description="Safe-completion safety training for language models in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["safecomp", "safecomp.*"]),
    package_data={"safecomp": ["spec/policies/*.yaml"]},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8.1",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.21",
        "safetensors>=0.6",
        "jinja2>=3.1",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "protobuf>=4.25",
    ],
    extras_require={
        # torch must be installed first as `torch==2.13.0` (CPU build); see README.
        # Only for the side-by-side PPO timing in benchmarks/ (TRL 1.13 dropped PPOTrainer).
        "bench": ["trl==1.12.0"],
        "test": ["pytest>=8", "torch==2.13.0", "transformers[serving]==5.23.0", "peft==0.21.2", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    },
)
