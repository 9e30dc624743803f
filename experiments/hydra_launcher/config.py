"""``hydra/launcher=charrnn``: the settings of charrnn's launcher, registered in Hydra's ConfigStore."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class ProcessLauncherConf:
    _target_: str = "hydra_plugins.charrnn_launcher.process_launcher.JobProcessLauncher"

    # jobs running at once: a count, or -1 for one per core this process may use (-2: all but one, ...)
    n_jobs: int = -1


ConfigStore.instance().store(group="hydra/launcher", name="charrnn", node=ProcessLauncherConf, provider="charrnn")
