"""One module per view of the operator window: ``data`` (import, datasets), ``train``
(training with a live learning curve) and ``registry`` (versions, aliases, gates, compare,
lineage). Each view calls :class:`edgeloop.hub.services.Hub` methods only through an
:class:`edgeloop.app.tasks.TaskRunner`."""
