"""Lineage walks through the registry: dataset -> run(s) -> version(s) -> bundles ->
deployments from any link, and parent/child versions both ways (fine-tuning,
continual learning)."""

from __future__ import annotations

from edgeloop.hub.errors import NotFoundError, RegistryError
from edgeloop.hub.registry.catalog import Catalog
from edgeloop.hub.registry.fields import HEX, MIN_PREFIX


class Lineage(Catalog):
    """Walks from any dataset, run, version, bundle or deployment to everything linked to it."""

    def lineage(self, ref: str) -> dict:
        """Walk dataset -> run(s) -> version(s) -> bundles -> deployments from any link.

        ``ref`` is any of:

        * a dataset id (``ds-3fa1c09e77d2``) or sha256 (prefix of >= 8 hex digits):
          every run on the dataset and everything made from them;
        * a run id (``run-7``): every version the run produced;
        * a version ref (``iris:3``, ``iris`` for the latest, ``iris@production``);
        * a bundle sha256 (prefix of >= 8 hex digits): narrowed to that bundle;
        * a deployment id (``dep-12``) or the command id of a deploy/rollback:
          walks back from the deployment to its bundle, version, run and dataset.

        Returns::

            {"ref": ref, "kind": "dataset" | "run" | "version" | "bundle" | "deployment",
             "dataset": {...},
             "run": {...} (the run; for a dataset, its newest run or None),
             "runs": [{...run}, ...] (oldest first),
             "versions": [{...version, "bundles": [{...bundle, "deployments": [...]}],
                           "ancestors": [...], "descendants": [...]}],
             "deployments": [...every deployment above, newest first],
             "deployment": {...} (only for a deployment ref, else None),
             "captures": [{"batch_id", "agent_id", "model", "version", "rows", "labelled_rows",
                           "first_at", "last_at"}] (the captured batches the dataset was made of)}

        ``ancestors`` follow ``parent_version`` up (nearest first) and
        ``descendants`` follow it down (breadth first): versions fine-tuned from
        this one, possibly on other datasets. Each is ``{"id", "parent_version",
        "run_id", "dataset_id", "dataset_sha256", "created_at"}``.
        """
        with self._snapshot():
            start = self._resolve_lineage_ref(str(ref).strip())
            tree = [self._version_tree(v, start["bundle"]) for v in start["versions"]]
            deployments = [d for v in tree for b in v["bundles"] for d in b["deployments"]]
            deployments.sort(key=lambda d: (d["created_at"], d["id"]), reverse=True)
            runs = start["runs"]
            return {
                "ref": ref, "kind": start["kind"], "dataset": start["dataset"],
                "run": runs[-1] if runs else None, "runs": runs, "versions": tree,
                "deployments": deployments, "deployment": start["deployment"],
                "captures": self._captures_of(start["dataset"]),
            }

    def _captures_of(self, dataset: dict | None) -> list[dict]:
        """The captured batches a dataset was made of (oldest first): those registered as it, and those its
        ``source`` names (``capture:<batch>,...``, written by a retrain from captured data)."""
        source = str((dataset or {}).get("source") or "")
        named = [p.rsplit("/", 1)[-1] for p in source[len("capture:"):].split(",") if p] \
            if source.startswith("capture:") else []
        if dataset is None:
            return []
        marks = ", ".join("?" * len(named)) or "NULL"
        rows = self._rows("captures", f"dataset_id = ? OR batch_id IN ({marks})", [dataset["id"], *named],
                          "first_at, batch_id")
        keep = ("batch_id", "agent_id", "model", "version", "rows", "labelled_rows", "first_at", "last_at")
        return [{k: r.get(k) for k in keep} for r in rows]

    def _resolve_lineage_ref(self, ref: str) -> dict:
        """Where a lineage walk starts: kind, dataset, runs, versions, bundle, deployment."""
        order = "model_name, CAST(version AS INTEGER)"
        if ref.startswith("run-"):
            run = self.get_run(ref)
            versions = self._version_extras(self._rows("versions", "run_id = ?", [run["id"]], order))
            return self._start("run", [run], versions)
        deployment = self._first("deployments", "id = ? OR command_id = ?", [ref, ref])
        if deployment is not None:
            return self._deployment_start(deployment)
        if ref.lower().startswith("ds-"):
            return self._dataset_start(self.get_dataset(ref), order)
        if "@" not in ref and ":" not in ref and len(ref) >= MIN_PREFIX and HEX.match(ref.lower()):
            bundle = self._unique_prefix("bundles", "sha256", ref.lower(), "bundle")
            dataset = self._unique_prefix("datasets", "sha256", ref.lower(), "dataset")
            if bundle is not None and dataset is not None:
                raise RegistryError(f"{ref!r} is the start of both a bundle and a dataset sha256; "
                                    f"give more hex digits or the dataset id ({dataset['id']})")
            if bundle is not None:
                version = self.get_version(bundle["version_id"])
                return self._start("bundle", [self.get_run(version["run_id"])], [version], bundle)
            if dataset is not None:
                return self._dataset_start(dataset, order)
        model = ref.partition("@")[0].rpartition(":")[0] or ref.partition("@")[0]
        if "@" in ref or ":" in ref or self._first("models", "name = ?", [model]) is not None:
            version = self.get_version(ref)
            return self._start("version", [self.get_run(version["run_id"])], [version])
        raise NotFoundError(
            f"{ref!r} names no dataset, run, version, bundle or deployment; use a dataset id (ds-...) "
            f"or sha256, a run id (run-7), a version (model:3, model for its latest, model@alias), "
            f"at least {MIN_PREFIX} hex digits of a bundle or dataset sha256, or a deployment "
            "(dep-12, or its command id)"
        )

    def _start(self, kind: str, runs: list[dict], versions: list[dict], bundle: dict | None = None,
               deployment: dict | None = None, dataset: dict | None = None) -> dict:
        """The start of a walk; the dataset is the first run's unless given."""
        if dataset is None:
            dataset = self.get_dataset(runs[0]["dataset_id"])
        return {"kind": kind, "dataset": dataset, "runs": runs, "versions": versions,
                "bundle": bundle, "deployment": deployment}

    def _dataset_start(self, dataset: dict, order: str) -> dict:
        runs = self._rows("runs", "dataset_id = ?", [dataset["id"]],
                          "started_at, CAST(SUBSTR(id, 5) AS INTEGER)")
        versions: list[dict] = []
        if runs:
            marks = ", ".join("?" * len(runs))
            versions = self._version_extras(
                self._rows("versions", f"run_id IN ({marks})", [r["id"] for r in runs], order))
        return self._start("dataset", runs, versions, dataset=dataset)

    def _deployment_start(self, deployment: dict) -> dict:
        sha = deployment["bundle_sha256"] or deployment["target_sha256"]
        bundle = self._first("bundles", "sha256 = ?", [sha]) if sha else None
        if bundle is None:
            raise NotFoundError(
                f"deployment {deployment['id']} ({deployment['kind']} to {deployment['agent_id']}) names "
                f"bundle {str(sha)[:16]}…, which is not registered in this hub (a rollback to a bundle "
                "from elsewhere), so its lineage ends there"
            )
        version = self.get_version(bundle["version_id"])
        return self._start("deployment", [self.get_run(version["run_id"])], [version], bundle, deployment)

    def _version_tree(self, version: dict, only_bundle: dict | None) -> dict:
        bundles = [only_bundle] if only_bundle else self._rows(
            "bundles", "version_id = ?", [version["id"]], "created_at")
        return {**version, "bundles": [
            {**b, "deployments": self._rows("deployments", "target_sha256 = ?", [b["sha256"]],
                                            "created_at DESC")}
            for b in bundles
        ], "ancestors": self._ancestors(version), "descendants": self._descendants(version["id"])}

    def _link(self, version: dict) -> dict:
        run = self._first("runs", "id = ?", [version["run_id"]]) or {}
        dataset = self._first("datasets", "id = ?", [run.get("dataset_id")]) or {}
        return {"id": version["id"], "parent_version": version.get("parent_version"),
                "run_id": version["run_id"], "dataset_id": run.get("dataset_id"),
                "dataset_sha256": dataset.get("sha256"), "created_at": version["created_at"]}

    def _ancestors(self, version: dict) -> list[dict]:
        out: list[dict] = []
        seen = {version["id"]}
        parent = version.get("parent_version")
        while parent and parent not in seen:
            seen.add(parent)
            row = self._first("versions", "id = ?", [parent])
            if row is None:
                break
            out.append(self._link(row))
            parent = row.get("parent_version")
        return out

    def _descendants(self, version_id: str) -> list[dict]:
        out: list[dict] = []
        seen, frontier = {version_id}, [version_id]
        while frontier:
            marks = ", ".join("?" * len(frontier))
            children = [c for c in self._rows("versions", f"parent_version IN ({marks})", frontier,
                                              "created_at, model_name, CAST(version AS INTEGER)")
                        if c["id"] not in seen]
            seen.update(c["id"] for c in children)
            out.extend(self._link(c) for c in children)
            frontier = [c["id"] for c in children]
        return out

