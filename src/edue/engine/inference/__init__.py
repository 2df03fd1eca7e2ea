"""One-pass prediction: the :class:`Predictor` (batched, sliding-window and tiled under
a memory budget, with the memory model and receptive-field bound that tiling needs) and
the feature taps it offers. Prediction on files is :mod:`edue.engine.predict`."""
