"""The model's infrastructure: the frozen backbone, the training loop and precision, the frozen-prefix cache."""
