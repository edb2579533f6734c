"""steeldefect: a Keras reproduction of Yulianto et al. (2023), UNet-EfficientNet steel defect detection.

Modules follow the pipeline (see DESIGN.md): ``rle`` → ``data`` → ``synthetic`` / ``loaders`` → ``models`` /
``metrics`` → ``training`` → ``thresholds`` / ``cascade`` → ``report`` / ``experiments``. Importing the package
imports nothing heavy; import the module you need.
"""

__version__ = "0.1.0"


def quiet_tensorflow(before_first_op=None) -> None:
    """Import TensorFlow with its C++ start-up logs hidden (for the command lines and notebooks; call it first).

    ``TF_CPP_MIN_LOG_LEVEL`` hides most of them, but absl prints a line on the process's stderr before reading it,
    so stderr is closed while TensorFlow loads and finds its devices. ``before_first_op`` is called between the
    import and TensorFlow's first operation: what must be configured at program start (a multi-worker strategy).
    """
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    devnull, saved = os.open(os.devnull, os.O_WRONLY), os.dup(2)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        if before_first_op is not None:
            before_first_op()
        tf.constant(0)  # device discovery happens on the first op
        tf.get_logger().setLevel(logging.ERROR)
        tf.autograph.set_verbosity(0)
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
