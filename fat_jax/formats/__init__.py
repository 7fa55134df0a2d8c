"""Files from outside fat_jax: the one unpickler, torch.save files read without PyTorch, their
conversion."""
