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


# Packages that transformers imports whenever they are installed, for features no warm-ray actor
# uses: scikit-learn (``sklearn.metrics.roc_curve``, assisted generation's confidence threshold;
# ``transformers.generation.candidate_generator``) and SciPy (``scipy.optimize``, the Hungarian
# matching of object-detection losses; ``transformers.loss``). ``transformers.modeling_utils``
# imports both modules, whichever model class is loaded.
UNUSED_IN_ACTORS = ("sklearn", "scipy")


def hide_unused_packages() -> tuple[str, ...]:
    """In a Ray actor that has not imported transformers yet, make ``UNUSED_IN_ACTORS``
    unimportable; returns the names it hid.

    transformers looks each of them up with ``importlib.util.find_spec`` and imports it only if
    found. A ``None`` entry in ``sys.modules`` is Python's mark of a module that is not there
    (``import`` raises ModuleNotFoundError, ``find_spec`` returns None), so transformers takes
    the path it takes on a machine without them: 0.8-1 s of CPU off the start of every actor
    that builds a model (scikit-learn brings SciPy and pandas along). transformers has no
    setting for this, and importing a model's own module instead of the Auto classes does not
    avoid it: ``modeling_utils`` imports the generation utilities itself.

    Only in a Ray actor, whose process is the role's alone (warm-ray imports neither package);
    a driver, or code that builds a role in-process, keeps them. ``warm_ray`` never imports Ray:
    a process that has not imported it is no Ray worker.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is None or "transformers" in sys.modules or ray.get_runtime_context().get_actor_id() is None:
        return ()
    hidden = tuple(name for name in UNUSED_IN_ACTORS if name not in sys.modules)
    for name in hidden:
        sys.modules[name] = None
    return hidden
