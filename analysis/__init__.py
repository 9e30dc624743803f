"""charrnn_analysis: look inside trained models and compare runs; a library over arrays, text and checkpoints
that never trains and never imports MLflow, Hydra or charrnn_experiments (tests/test_layers.py checks). The
console scripts, and reading runs from MLflow, are charrnn_experiments' (analyze, runs).

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
    sweep_report  a sweep's leaderboard and figures as one self-contained HTML page and PNGs
    streams   the validation loss stream by stream, as training measures it
    trained_run   the hidden-state recording and top-units table every finished training run logs (an engine
                  callback)
    sources, report, tables   where models and texts come from, the analysis folder, CSV and markdown tables
"""
