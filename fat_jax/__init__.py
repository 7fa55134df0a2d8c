"""fat_jax: fast adversarial training and catastrophic overfitting in JAX."""
__version__ = '0.1.0'
