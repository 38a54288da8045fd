"""Model families (HAR, text, sequence), their checkpoints and the batched jit predictor.

One folder per family (``har/``, ``text/``, ``series/``) with the same files in each; what
they share (checkpoint format, Predictor, training loop, reports, figures) lives here.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # the shipped models
