from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="steeldefect",
    version="0.1.0",
    description=(
        "Keras reproduction of 'Innovative UNET-Based Steel Defect Detection Using 5 Pretrained Models' "
        "(Yulianto et al., Evergreen 2023) on the Severstal steel defect data"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["steeldefect", "steeldefect.*"]),
    package_data={"steeldefect": ["realism_real.json"]},  # the real sample's statistics (numbers, no pixels)
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
        ],
    },
)
