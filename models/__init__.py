"""Model families (HAR, text, sequence), their checkpoints and the batched jit predictor."""
