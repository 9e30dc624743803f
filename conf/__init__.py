"""The YAML configs of the four commands. Hydra imports this package to read them, so the schema they list in
their defaults (structured configs in charrnn_experiments.schema) is registered whoever composes them."""

import charrnn_experiments.schema  # noqa: F401  (registers the schema in Hydra's ConfigStore)
