"""charrnn: character-level RNN language models in pure NumPy."""
