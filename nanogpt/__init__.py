"""nanogpt: a small, readable GPT trainer after karpathy/nanoGPT.

Importing the package imports nothing heavy: torch is loaded by the modules
that need it (model, data, train), so `nanogpt.events` stays stdlib-only.
"""

__version__ = "0.1.0"
