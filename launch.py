"""fat_jax's launcher in a checkout, the same as the installed `fat-jax-train`: see fat_jax/launch.py."""
from fat_jax.launch import run

if __name__ == '__main__':
  run()
