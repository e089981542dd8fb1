"""The end-to-end demo behind ``make demo``.

:mod:`examples.digits.digits` is its machine-learning half: scikit-learn's
digits split non-IID across clients, a small PyTorch MLP, local training,
evaluation as securely summable counts, and the plaintext FedAvg and
centralised baselines the secure run is plotted against. It needs the
``torch`` and ``demo`` extras, so this package imports nothing eagerly.
"""
