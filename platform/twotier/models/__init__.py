"""The two tiers' models: training, ONNX export, the parity gate and hold-out metrics.

- ``tier_one``: implicit ALS over the catalogue; the ONNX graph returns top-k candidates.
- ``tier_two``: the XGBoost ranker on the model-features vector, via onnxmltools.
- ``parity``: ONNX must match the native model within 1e-4, or registration is refused.
- ``metrics``: AUC, NDCG@k, Recall@k and the popularity baseline.
- ``data``: interactions and the temporal cut-off from the offline store.
- ``evaluate``: both tiers together on the hold-out, against popularity.
"""
