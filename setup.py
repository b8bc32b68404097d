"""Package metadata for threestudio_like.

On a CPU-only machine install with the constraint file so that pip keeps the CPU build of torch:
``pip install -c constraints-cpu.txt -e ".[test]"`` (``make test`` does this for you).
"""
from setuptools import find_packages, setup

RECIPES_PACKAGE = "threestudio_like._recipes"

setup(
    name="threestudio_like",
    version="0.1.0",
    description="Text/image-to-3D by distilling diffusion priors into a hash-grid NeRF.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["threestudio_like", "threestudio_like.*"]) + [RECIPES_PACKAGE],
    # The recipes ship inside the package: configs/ (kept at the repository root, where
    # ``--config configs/demo.yaml`` and ``./configs/`` lookups work in a checkout) is installed as
    # threestudio_like/_recipes/, the last place ``--config NAME`` looks (threestudio_like/config.py).
    package_dir={RECIPES_PACKAGE: "configs"},
    # The preview's pinned npm project (installed into a cache by --preview-assets) and the
    # Node.js script that runs the glTF validator.
    package_data={RECIPES_PACKAGE: ["*.yaml"],
                  "threestudio_like.preview": ["npm/package.json", "npm/package-lock.json", "validate.cjs"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "omegaconf>=2.3,<3",
        "pytorch-lightning>=2.1,<3",
        "nerfacc>=0.5.2,<0.6",
        "PyMCubes>=0.1.4",
        "trimesh>=4.0",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4.9",
        "rich>=13",
        "tensorboard>=2.14",
        # below the next major version: our attention processors use diffusers' internals
        "diffusers>=0.30,<1",
        "transformers>=4.40,<6",
        "huggingface_hub>=0.23",
        "safetensors>=0.4",
        # HawkI: LoRA on the UNet's attention (diffusers' add_adapter needs peft >= 0.6)
        "peft>=0.6",
        "Pillow>=9",
        "PyYAML>=5.1",
        # textured, cleaned mesh export (both MIT, binary wheels, no GPU)
        "xatlas>=0.0.9",
        "fast-simplification>=0.1.7",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "submitit>=1.5",
            "opencv-python-headless>=4.8,<5",
            "matplotlib>=3.7",
            "usd-core>=23.11",
            # the Triton hash-grid kernels are tested in Triton's CPU interpreter; CPU wheels are on
            # PyPI for Linux (CUDA builds of torch ship triton already)
            "triton>=3.0; platform_system == 'Linux'",
        ],
        # USDZ export for Apple AR viewers
        "usdz": ["usd-core>=23.11"],
        "slurm": ["submitit>=1.5"],
        # Only what installs from the package index. The fast hash grid, tiny-cuda-nn, builds from
        # its git source with nvcc (README: "GPU quick start"); without it a PyTorch one runs.
        "gpu": ["ninja"],
        "bench": ["opencv-python-headless>=4.8,<5", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["threestudio-like=threestudio_like.cli:main"]},
)
