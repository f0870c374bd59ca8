"""The runner works offline unless a run says ``offline=false``: a model or dataset must be local or in the Hugging
Face cache, and a missing one fails at once instead of retrying the network.

huggingface_hub (and transformers through it) and datasets read their offline flags once, when first imported.
Importing this module sets the flags to 1 where the environment does not set them, so ``runners.evaluate`` imports
it before anything that may import those libraries; ``use_network`` then applies a run's choice to the
environment and to what the libraries already imported read from it.
"""

from __future__ import annotations

import os
import sys

FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
#: where each library keeps what it read of the flags
READ = {"huggingface_hub.constants": ("HF_HUB_OFFLINE",), "datasets.config": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}

for flag in FLAGS:
    os.environ.setdefault(flag, "1")


def use_network(allowed: bool) -> None:
    """Let the hub libraries download (``allowed``) or keep them offline, imported already or not."""
    for flag in FLAGS:
        os.environ[flag] = "0" if allowed else "1"
    for module, names in READ.items():
        if module in sys.modules:
            for name in names:
                setattr(sys.modules[module], name, not allowed)
