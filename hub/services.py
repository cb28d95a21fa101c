"""The hub's services: one object the CLI and the GUI both drive.

``Hub(home)`` opens the registry under the home folder, loads (or creates) the
hub signing key on first use, and offers the operations of the loop: import
data, build model versions, pack signed bundles, and connect to the fleet.
"""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

from agent.envelope import SigningKey

from .data import Dataset, load_csv, write_csv
from .home import Home, default_home
from .keys import export_public_pem, load_or_create_hub_key, public_key_path
from .progress import CancelToken, ProgressCallback
from .registry import Registry


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return "operator"


class Hub:
    def __init__(self, home: Path | str | Home | None = None, *, actor: str | None = None) -> None:
        if isinstance(home, Home):
            self.home = home
        else:
            self.home = Home(Path(home) if home is not None else default_home())
        self.home.ensure()
        self.registry = Registry(self.home.registry_path)
        self.actor = actor or default_actor()
        self._key: SigningKey | None = None

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> "Hub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- keys -------------------------------------------------------------------
    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_or_create_hub_key(self.home)
        return self._key

    @property
    def public_key_path(self) -> Path:
        export_public_pem(self.home)
        return public_key_path(self.home)

    # --- data ---------------------------------------------------------------------
    def register_dataset(self, dataset: Dataset, name: str | None = None) -> dict:
        """Keep a canonical copy under the home and record it (idempotent by content hash)."""
        copy = self.home.datasets_dir / f"{dataset.sha256[:16]}.csv"
        if not copy.exists():
            write_csv(dataset, copy)
        return self.registry.add_dataset(
            dataset.sha256, name or Path(dataset.source or "dataset").stem, dataset.source or str(copy),
            dataset.n_rows, dataset.feature_names, dataset.labels, actor=self.actor)

    def import_csv(self, path: Path, label_column: str = "label", name: str | None = None) -> tuple[Dataset, dict]:
        ds = load_csv(path, label_column)
        return ds, self.register_dataset(ds, name)

    def load_dataset(self, ref: str) -> Dataset:
        rec = self.registry.get_dataset(ref)
        copy = self.home.datasets_dir / f"{rec['sha256'][:16]}.csv"
        return load_csv(copy, labels=rec.get("labels"))

    # --- models ---------------------------------------------------------------------
    def build_version(self, dataset: Dataset, dataset_record: dict, model_name: str, params, *,
                      progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                      quantize: bool = True, budget_points: float = 1.0, parent_version: str | None = None):
        from .pipeline import build_version

        return build_version(self.registry, self.home.models_dir, dataset, dataset_record, model_name, params,
                             quantize=quantize, budget_points=budget_points, parent_version=parent_version,
                             progress=progress, cancel=cancel)

    def build_bundle(self, version_ref: str):
        from .bundler import build_bundle

        return build_bundle(self.registry, self.home.models_dir, self.home.bundles_dir, version_ref, self.key,
                            actor=self.actor)

    def bundle_bytes(self, ref: str) -> tuple[dict, bytes]:
        rec = self.registry.get_bundle(ref)
        return rec, Path(rec["path"]).read_bytes()

    # --- fleet -------------------------------------------------------------------------
    def fleet(self, broker_url: str, on_change=None):
        from .broker import BrokerAddress
        from .fleet import Fleet

        return Fleet(BrokerAddress.parse(broker_url), self.registry, self.key, actor=self.actor,
                     on_change=on_change)

    def reset(self) -> None:
        """Delete everything under the home (used by ``edgeloop demo --fresh``)."""
        self.close()
        shutil.rmtree(self.home.root, ignore_errors=True)
