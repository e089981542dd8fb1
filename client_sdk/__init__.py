"""client_sdk: embed secure aggregation in an existing training loop.

* :mod:`client_sdk.client`: :class:`~client_sdk.client.Client` (check in,
  train, take part in the secure sum, repeat until the task is over),
  :func:`~client_sdk.client.enrol` and :class:`~client_sdk.client.ClientPolicy`.
* :mod:`client_sdk.transport`: signed HTTP with bounded retries
  (:class:`~client_sdk.transport.RetryPolicy`).
* :mod:`client_sdk.errors`: what the SDK raises (``ClientError`` and its
  subclasses: ``TrustError``, ``ServerUnreachable``, ``RequestRefused``,
  ``PolicyViolation``).
* :mod:`client_sdk.models`: any model as one flat ``float32`` vector
  (``TorchModel``, ``NumpyModel``, ``FunctionModel``).
* :mod:`client_sdk.identity` and :mod:`client_sdk.ledger`: the client's key
  file and its record of contributions.

Logs go to the ``secagg.client`` logger: one INFO line per round, one per
retried request, a WARNING when a request is given up.
"""
