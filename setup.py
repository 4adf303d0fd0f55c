import glob
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithKernels(build_py):
    """Copy the top-level kernels/ (*.cu, *.cuh) into the built package as
    cpstyle/kernels, where cpstyle/cuda.py looks first when installed."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "cpstyle", "kernels")
        os.makedirs(dst, exist_ok=True)
        for f in glob.glob("kernels/*.cu") + glob.glob("kernels/*.cuh"):
            shutil.copy(f, dst)


setup(
    name="cpstyle",
    version="0.1.0",
    description="Neural style transfer (Hvass-Labs tutorial #15) on a hand-written "
                "VGG-16: NumPy reference, CuPy + custom CUDA kernels on a GPU",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cpstyle", "cpstyle.*"]),
    package_data={"cpstyle": ["data/*"]},
    cmdclass={"build_py": BuildPyWithKernels},
    install_requires=["numpy>=1.24", "h5py>=3.8", "pillow>=10", "tqdm>=4.60"],
    extras_require={
        "cuda12": ["cupy-cuda12x>=13"],
        "cuda13": ["cupy-cuda13x>=14"],
        # NVRTC alone compiles the kernels with no GPU and no driver (CI's check)
        # `cpstyle batch --engine dask` (cpstyle/batch.py); CI runs its tests too
        "dask": ["distributed>=2024.1"],
        "test": ["pytest>=7", "cupy-cuda13x>=14", "nvidia-cuda-nvrtc>=13,<14",
                 "distributed>=2024.1"],
        # torch is pinned: that build is on local disk here; a bare `torch` pulls GBs
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["cpstyle=cpstyle.cli:main"]},
)
