"""The hub's services: one object the CLI and the GUI both drive.

``Hub(home)`` opens the registry under the home folder, loads (or creates) the
hub signing key on first use, and offers the operations of the loop: import
data, train model versions, promote them with aliases behind evaluation gates,
export them, pack signed bundles, deploy and roll back over the fleet, and the
views of the fleet and its drift. Every query returns plain records (dicts and
lists); :mod:`edgeloop.hub.views` formats what both faces show.

Every long operation takes a ``progress`` callback and (where it can be
stopped) a ``cancel`` token from :mod:`edgeloop.hub.progress`; mutating
operations are audited under :attr:`Hub.actor`.

The methods live in one module per concern, each class building on the one before:
:mod:`.core` (home, registry, key, audit log), :mod:`.datasets`, :mod:`.models`
(training, versions, export), :mod:`.promotion` (aliases, gates, compare, lineage),
:mod:`.agents` (fleet connection, agents, drift, discovery) and :mod:`.delivery`
(bundles, deploy, rollback), :mod:`.shadow` on it (shadow reports, promote, stop);
:mod:`.evaluation` (scoring versions on separate test data,
predictions for a file) builds on :mod:`.promotion` beside them; :mod:`.drift` (the fleet's
drift per model, agent and feature, for ``edgeloop drift`` and the GUI's charts) on :mod:`.core`;
:mod:`.enrollment` (enrolling an agent in one step, report keys, tags) on :mod:`.agents`;
:mod:`.captures` (field data captured by agents, turning capture on) on :mod:`.delivery`.
:mod:`.retrain` (acting on drift: fine-tune on captured rows, judge gain and forgetting) on
:mod:`.captures`.
"""

from __future__ import annotations

from edgeloop.hub.services.airgap import HubAirgap
from edgeloop.hub.services.captures import HubCaptures
from edgeloop.hub.services.core import default_actor
from edgeloop.hub.services.delivery import HubDelivery
from edgeloop.hub.services.drift import HubDrift
from edgeloop.hub.services.enrollment import HubEnrollment
from edgeloop.hub.services.evaluation import HubEvaluation
from edgeloop.hub.services.preflight import HubPreflight
from edgeloop.hub.services.retrain import HubRetrain
from edgeloop.hub.services.rollouts import HubRollouts
from edgeloop.hub.services.shadow import HubShadow

__all__ = ["Hub", "default_actor"]


class Hub(HubRetrain, HubEvaluation, HubAirgap, HubCaptures, HubShadow, HubRollouts, HubDelivery, HubDrift,
          HubEnrollment, HubPreflight):
    """The one way in to the hub, for the CLI, the GUI and scripts (see the module docstring)."""
