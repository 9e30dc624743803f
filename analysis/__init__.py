"""charrnn_analysis: look inside trained models and compare runs; it reads checkpoints and MLflow runs, never trains.

Modules, one concern each:
    record    run a model over a text, keep every layer's h (LSTM: c and gates; GRU: gates) in a compact .npz
    features  per-character signals (inside quotes, bracket depth, comments...), a registry users extend
    ranking   rank units per feature (Pearson |r|, ROC AUC), LSTMVis range selection
    control   each feature's best unit against shuffled text and an untrained model
    gradients recurrent spectra and ||dL/dh_t|| over time
    figures   text coloured by a unit, heatmaps, gate saturation, gradient flow (PNG)
    explorer  one self-contained HTML file to browse units over the text
    compare   one table row per run of an experiment or sweep, leaderboard and figures
    study     a seed-repeated sweep as the paper's table (mean ± std over seeds) and its figures
    sources, report, tables, cli   where models and texts come from, the analysis folder, the console scripts
"""
