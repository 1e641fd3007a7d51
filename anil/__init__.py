"""ANIL (Almost No Inner Loop; Raghu et al., 2019) on ``torch.func``.

Read in this order: ``model`` (the network), ``sampler`` (tasks), ``algorithm`` (inner and outer
loop), ``evaluation`` (meta-test), ``train`` (the training script). ``fast`` computes the same
meta-gradient faster; ``paper/`` holds the paper's other experiments (MAML, NIL, CKA) and
``run/`` the machinery of long runs (checkpoints, torchrun, metrics, command line).
"""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

from anil.algorithm import adapt_head, meta_loss, meta_train_step  # noqa: E402
from anil.data import load_split  # noqa: E402
from anil.evaluation import evaluate  # noqa: E402
from anil.model import ConvBody, make_head  # noqa: E402
from anil.sampler import TaskSampler  # noqa: E402



def __getattr__(name):
    """``anil.load_run`` is loaded on first use: it belongs to the run machinery (anil.run),
    which importing the method must not load."""
    if name == "load_run":
        from anil.run.checkpoint import load_run
        return load_run
    raise AttributeError(f"module 'anil' has no attribute {name!r}")


__all__ = ["ConvBody", "make_head", "TaskSampler", "load_split", "adapt_head", "meta_loss",
           "meta_train_step", "evaluate", "load_run", "__version__"]
