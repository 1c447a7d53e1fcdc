"""Stage 'train': the training engine, the model kinds' fitting, losses, augmentation, checkpoints, gradient cache, distributed training."""
