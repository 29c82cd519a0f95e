"""warm-ray: WARM (weight-averaged reward models) and WARP (weight-averaged rewarded policies) on Ray.

``warm_ray`` is the core: plain PyTorch, no Ray import. ``actors`` holds the Ray roles and the
stage drivers; ``tune`` holds the Ray Tune sweeps.
"""

__version__ = "0.1.0"


def quiet_transformers() -> None:
    """Silence per-load reports and progress bars of transformers (our own logs say what happens)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
