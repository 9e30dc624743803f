"""charrnn's Hydra launcher (process_launcher.py). Hydra accepts launchers only from the hydra_plugins
namespace; the sweep callback puts it in place of the joblib launcher's pool."""
