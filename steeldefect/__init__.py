"""steeldefect: a Keras reproduction of Yulianto et al. (2023), UNet-EfficientNet steel defect detection.

Modules follow the pipeline (see DESIGN.md): ``rle`` → ``data`` → ``synthetic`` / ``loaders`` → ``models`` /
``metrics`` → ``training`` → ``thresholds`` / ``cascade`` → ``report`` / ``experiments``. Importing the package
imports nothing heavy; import the module you need.
"""

__version__ = "0.1.0"
