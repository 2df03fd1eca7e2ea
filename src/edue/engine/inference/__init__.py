"""One-pass prediction: the :class:`Predictor` (batched, sliding-window and tiled under
a memory budget), the feature taps it offers, and prediction on files (the reading /
predicting / writing pipeline and its writers)."""
