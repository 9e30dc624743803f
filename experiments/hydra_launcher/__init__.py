"""charrnn's Hydra launcher, ``hydra/launcher=charrnn``: each job in a process of its own.

Hydra finds launchers only in the ``hydra_plugins`` namespace, where it imports every module whose name does
not start with ``_`` at each command's start: ``config.py`` registers the launcher's settings and
``process_launcher.py`` holds the light ``Launcher`` class; its body, ``_core.py``, is imported only when a
sweep starts.
"""
