-- A registry at schema version 1 (edgeloop 0.1), frozen: never regenerate or edit it.
-- Written through edgeloop 0.1's Registry (commit c6eb559, hub/registry.py: MIGRATIONS =
-- [_m001_initial]) and dumped with "\n".join(sqlite3.connect(path).iterdump()).
-- tests/test_registry_factory.py migrates it to prove released migrations still read
-- registries already on users' disks.
BEGIN TRANSACTION;
CREATE TABLE "agents" (
   "agent_id" TEXT PRIMARY KEY,
   "status" TEXT NOT NULL,
   "session" INTEGER,
   "agent_version" TEXT,
   "host" TEXT,
   "http_url" TEXT,
   "active_model" TEXT,
   "active_version" TEXT,
   "active_bundle" TEXT,
   "started_at" REAL,
   "last_seen" REAL,
   "state" TEXT
);
INSERT INTO "agents" VALUES('pi-kitchen','online',1,'0.1.0','pi-kitchen','http://10.0.0.21:8080','iris','1','25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71',1718000000.0,1.79576570403882622723e+09,'{"schema": 1, "type": "agent_state", "agent_id": "pi-kitchen", "status": "online", "session": 1, "agent_version": "0.1.0", "started_at": 1718000000.0, "host": "pi-kitchen", "http_url": "http://10.0.0.21:8080", "active": {"model": "iris", "version": "1", "bundle_sha256": "25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71"}, "installed": [{"model": "iris", "version": "1", "bundle_sha256": "25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71"}]}');
INSERT INTO "agents" VALUES('pi-garage','offline',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,1.79576570405872964859e+09,NULL);
CREATE TABLE "audit" (
   "id" INTEGER PRIMARY KEY,
   "at" REAL NOT NULL,
   "at_iso" TEXT NOT NULL,
   "actor" TEXT NOT NULL,
   "action" TEXT NOT NULL,
   "target" TEXT NOT NULL,
   "detail" TEXT NOT NULL
);
INSERT INTO "audit" VALUES(1,1.79576570400472521789e+09,'2026-11-27T07:48:24.004+00:00','alice','dataset.add','ds-e6a515374e02','{"name": "iris.csv", "sha256": "e6a515374e02273538ce39aa9ab599577364f8f86c43f62dc9307a26e53cdfae", "rows": 150}');
INSERT INTO "audit" VALUES(2,1.79576570401136684411e+09,'2026-11-27T07:48:24.011+00:00','alice','dataset.add','ds-69864d3563bf','{"name": "iris-field-2024-06.csv", "sha256": "69864d3563bfd9f521623d4179140c9b412c2b2027b2a6e2e18b183b26cd20e8", "rows": 412}');
INSERT INTO "audit" VALUES(3,1.79576570401253437993e+09,'2026-11-27T07:48:24.012+00:00','alice','run.start','run-1','{"dataset_id": "ds-e6a515374e02", "model_name": "iris"}');
INSERT INTO "audit" VALUES(4,1.79576570401360368733e+09,'2026-11-27T07:48:24.013+00:00','alice','run.succeeded','run-1','{"metrics": {"accuracy": 0.9667, "val_accuracy": 0.9583, "loss": 0.0912}}');
INSERT INTO "audit" VALUES(5,1.79576570401446461685e+09,'2026-11-27T07:48:24.014+00:00','alice','model.add','iris','{"task": "classification"}');
INSERT INTO "audit" VALUES(6,1.79576570401481413847e+09,'2026-11-27T07:48:24.014+00:00','alice','version.add','iris:1','{"run_id": "run-1", "chosen": "int8", "parent_version": null}');
INSERT INTO "audit" VALUES(7,1.79576570401566934587e+09,'2026-11-27T07:48:24.015+00:00','alice','run.start','run-2','{"dataset_id": "ds-69864d3563bf", "model_name": "iris"}');
INSERT INTO "audit" VALUES(8,1.79576570401647663119e+09,'2026-11-27T07:48:24.016+00:00','alice','run.succeeded','run-2','{"metrics": {"accuracy": 0.9515, "val_accuracy": 0.9432, "loss": 0.1377}}');
INSERT INTO "audit" VALUES(9,1.79576570401729941365e+09,'2026-11-27T07:48:24.017+00:00','alice','version.add','iris:2','{"run_id": "run-2", "chosen": "fp32", "parent_version": "iris:1"}');
INSERT INTO "audit" VALUES(10,1.79576570401809120173e+09,'2026-11-27T07:48:24.018+00:00','alice','run.start','run-3','{"dataset_id": "ds-69864d3563bf", "model_name": "iris"}');
INSERT INTO "audit" VALUES(11,1.79576570401894974708e+09,'2026-11-27T07:48:24.018+00:00','alice','run.failed','run-3','{"metrics": {"loss": NaN}}');
INSERT INTO "audit" VALUES(12,1.79576570401973128316e+09,'2026-11-27T07:48:24.019+00:00','alice','bundle.add','25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71','{"version_id": "iris:1", "size": 5821, "key_id": "5f1c2a9e0b7d4c38"}');
INSERT INTO "audit" VALUES(13,1.79576570402072834961e+09,'2026-11-27T07:48:24.020+00:00','alice','bundle.add','9e958cfb463c00f6d61f5ced43076959a5b1e7aeed06a16dfefdfcdea0dc8154','{"version_id": "iris:2", "size": 5907, "key_id": "5f1c2a9e0b7d4c38"}');
INSERT INTO "audit" VALUES(14,1.79576570402165985101e+09,'2026-11-27T07:48:24.021+00:00','agent:pi-kitchen','agent.online','pi-kitchen','{"session": 1, "agent_version": "0.1.0"}');
INSERT INTO "audit" VALUES(15,1.79576570402953195572e+09,'2026-11-27T07:48:24.029+00:00','alice','deploy','pi-kitchen','{"deployment": "dep-1", "bundle_sha256": "25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71", "registered": true, "command_id": "6f0d1c8e2b4a49f1a3c5e7d9b1f3a5c7", "counter": 1}');
INSERT INTO "audit" VALUES(16,1.79576570403538537026e+09,'2026-11-27T07:48:24.035+00:00','agent:pi-kitchen','deployment.installed','pi-kitchen','{"deployment": "dep-1", "command_id": "6f0d1c8e2b4a49f1a3c5e7d9b1f3a5c7", "previous": "pending", "detail": "installed iris:1"}');
INSERT INTO "audit" VALUES(17,1.79576570403918743135e+09,'2026-11-27T07:48:24.039+00:00','agent:pi-kitchen','agent.active','pi-kitchen','{"previous": null, "bundle_sha256": "25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71"}');
INSERT INTO "audit" VALUES(18,1.79576570404702878002e+09,'2026-11-27T07:48:24.047+00:00','alice','deploy','pi-kitchen','{"deployment": "dep-2", "bundle_sha256": "9e958cfb463c00f6d61f5ced43076959a5b1e7aeed06a16dfefdfcdea0dc8154", "registered": true, "command_id": "0b9e7a5c3d1f48e6b2a4c6e8f0a2b4d6", "counter": 2}');
INSERT INTO "audit" VALUES(19,1.7957657040510847568e+09,'2026-11-27T07:48:24.051+00:00','agent:pi-kitchen','deployment.failed','pi-kitchen','{"deployment": "dep-2", "command_id": "0b9e7a5c3d1f48e6b2a4c6e8f0a2b4d6", "previous": "pending", "detail": "smoke_test_failed: outputs differ from the reference"}');
INSERT INTO "audit" VALUES(20,1795765704.05563,'2026-11-27T07:48:24.055+00:00','bob','rollback','pi-kitchen','{"deployment": "dep-3", "bundle_sha256": "61344929aa0dd183d0d7a0c74a487763b90f696f0a8c7f6d7a23ae57f546ac80", "registered": false, "command_id": "c4e2a0b8d6f44c1e9a7b5d3f1e9c7a5b", "counter": 3}');
INSERT INTO "audit" VALUES(21,1.79576570405885267258e+09,'2026-11-27T07:48:24.058+00:00','hub','agent.offline','pi-garage','{"previous": null}');
INSERT INTO "audit" VALUES(22,1.79576570406777262685e+09,'2026-11-27T07:48:24.067+00:00','agent:pi-kitchen','drift.detected','pi-kitchen','{"model": "iris", "version": "1", "window": 2, "features": ["petal_width"], "report_id": 2}');
INSERT INTO "audit" VALUES(23,1.7957657040707643032e+09,'2026-11-27T07:48:24.070+00:00','alice','note','iris:1','{"reason": "first field release"}');
CREATE TABLE "bundles" (
   "sha256" TEXT PRIMARY KEY,
   "version_id" TEXT NOT NULL REFERENCES "versions"("id"),
   "path" TEXT NOT NULL,
   "size" INTEGER NOT NULL,
   "key_id" TEXT NOT NULL,
   "created_at" REAL NOT NULL
);
INSERT INTO "bundles" VALUES('25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71','iris:1','/home/alice/.local/share/edgeloop/bundles/iris-1.elb',5821,'5f1c2a9e0b7d4c38',1.79576570401962566378e+09);
INSERT INTO "bundles" VALUES('9e958cfb463c00f6d61f5ced43076959a5b1e7aeed06a16dfefdfcdea0dc8154','iris:2','/home/alice/.local/share/edgeloop/bundles/iris-2.elb',5907,'5f1c2a9e0b7d4c38',1.79576570402064871791e+09);
CREATE TABLE "counters" (
   "key_id" TEXT PRIMARY KEY,
   "value" INTEGER NOT NULL
);
INSERT INTO "counters" VALUES('5f1c2a9e0b7d4c38',3);
CREATE TABLE "datasets" (
   "id" TEXT PRIMARY KEY,
   "sha256" TEXT NOT NULL,
   "name" TEXT NOT NULL,
   "source" TEXT NOT NULL,
   "rows" INTEGER NOT NULL,
   "features" TEXT NOT NULL,
   "labels" TEXT,
   "created_at" REAL NOT NULL
);
INSERT INTO "datasets" VALUES('ds-e6a515374e02','e6a515374e02273538ce39aa9ab599577364f8f86c43f62dc9307a26e53cdfae','iris.csv','builtin:iris',150,'["sepal_length", "sepal_width", "petal_length", "petal_width"]','["setosa", "versicolor", "virginica"]',1.79576570400451326374e+09);
INSERT INTO "datasets" VALUES('ds-69864d3563bf','69864d3563bfd9f521623d4179140c9b412c2b2027b2a6e2e18b183b26cd20e8','iris-field-2024-06.csv','file:/home/alice/data/iris-field-2024-06.csv',412,'["sepal_length", "sepal_width", "petal_length", "petal_width"]','["setosa", "versicolor", "virginica"]',1.79576570401118826864e+09);
CREATE TABLE "deployments" (
   "id" TEXT PRIMARY KEY,
   "bundle_sha256" TEXT REFERENCES "bundles"("sha256"),
   "target_sha256" TEXT,
   "agent_id" TEXT NOT NULL,
   "kind" TEXT NOT NULL,
   "command_id" TEXT NOT NULL,
   "counter" INTEGER NOT NULL,
   "status" TEXT NOT NULL,
   "detail" TEXT NOT NULL DEFAULT '',
   "created_at" REAL NOT NULL,
   "updated_at" REAL NOT NULL
);
INSERT INTO "deployments" VALUES('dep-1','25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71','25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71','pi-kitchen','deploy','6f0d1c8e2b4a49f1a3c5e7d9b1f3a5c7',1,'installed','installed iris:1',1.79576570402934908863e+09,1.79576570403499555586e+09);
INSERT INTO "deployments" VALUES('dep-2','9e958cfb463c00f6d61f5ced43076959a5b1e7aeed06a16dfefdfcdea0dc8154','9e958cfb463c00f6d61f5ced43076959a5b1e7aeed06a16dfefdfcdea0dc8154','pi-kitchen','deploy','0b9e7a5c3d1f48e6b2a4c6e8f0a2b4d6',2,'failed','smoke_test_failed: outputs differ from the reference',1.79576570404686522482e+09,1.79576570405084443094e+09);
INSERT INTO "deployments" VALUES('dep-3',NULL,'61344929aa0dd183d0d7a0c74a487763b90f696f0a8c7f6d7a23ae57f546ac80','pi-kitchen','rollback','c4e2a0b8d6f44c1e9a7b5d3f1e9c7a5b',3,'pending','',1.79576570405547761917e+09,1.79576570405547761917e+09);
CREATE TABLE "drift_reports" (
   "id" INTEGER PRIMARY KEY,
   "agent_id" TEXT NOT NULL,
   "model" TEXT NOT NULL,
   "version" TEXT NOT NULL,
   "bundle_sha256" TEXT NOT NULL,
   "window" INTEGER NOT NULL,
   "rows" INTEGER NOT NULL,
   "started_at" REAL NOT NULL,
   "ended_at" REAL NOT NULL,
   "drifted_features" TEXT NOT NULL,
   "report" TEXT NOT NULL,
   "received_at" REAL NOT NULL
);
INSERT INTO "drift_reports" VALUES(1,'pi-kitchen','iris','1','25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71',1,500,1718000800.0,1718001400.0,'[]','{"schema": 1, "type": "drift_report", "agent_id": "pi-kitchen", "model": "iris", "version": "1", "bundle_sha256": "25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71", "window": 1, "rows": 500, "started_at": 1718000800.0, "ended_at": 1718001400.0, "psi_threshold": 0.2, "ks_threshold": 0.2, "features": [{"name": "sepal_length", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 5.84, "drifted": false}, {"name": "sepal_width", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 3.05, "drifted": false}, {"name": "petal_length", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 3.76, "drifted": false}, {"name": "petal_width", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 1.2, "drifted": false}], "output_counts": [], "output_js": null, "drifted_features": []}',1.79576570406189346316e+09);
INSERT INTO "drift_reports" VALUES(2,'pi-kitchen','iris','1','25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71',2,500,1718001400.0,1718002000.0,'["petal_width"]','{"schema": 1, "type": "drift_report", "agent_id": "pi-kitchen", "model": "iris", "version": "1", "bundle_sha256": "25a0d50f88901568e6f014855ee6df7c10cae08b5f4b828f5ab1f8e3b2d8ef71", "window": 2, "rows": 500, "started_at": 1718001400.0, "ended_at": 1718002000.0, "psi_threshold": 0.2, "ks_threshold": 0.2, "features": [{"name": "sepal_length", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 5.84, "drifted": false}, {"name": "sepal_width", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 3.05, "drifted": false}, {"name": "petal_length", "counts": [12, 40, 31, 17], "psi": 0.02, "ks": 0.06, "mean": 3.76, "drifted": false}, {"name": "petal_width", "counts": [12, 40, 31, 17], "psi": 0.31, "ks": 0.06, "mean": 1.2, "drifted": true}], "output_counts": [], "output_js": null, "drifted_features": ["petal_width"]}',1.79576570406765532493e+09);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO "meta" VALUES('schema_version','1');
CREATE TABLE "models" (
   "name" TEXT PRIMARY KEY,
   "task" TEXT NOT NULL,
   "created_at" REAL NOT NULL
);
INSERT INTO "models" VALUES('iris','classification',1.79576570401436948773e+09);
CREATE TABLE "runs" (
   "id" TEXT PRIMARY KEY,
   "dataset_id" TEXT NOT NULL REFERENCES "datasets"("id"),
   "model_name" TEXT NOT NULL,
   "params" TEXT NOT NULL,
   "metrics" TEXT,
   "history" TEXT,
   "code_version" TEXT,
   "library_versions" TEXT,
   "started_at" REAL NOT NULL,
   "finished_at" REAL,
   "status" TEXT NOT NULL
);
INSERT INTO "runs" VALUES('run-1','ds-e6a515374e02','iris','{"epochs": 40, "batch_size": 32, "lr": 0.01, "hidden": [32, 16], "seed": 0}','{"accuracy": 0.9667, "val_accuracy": 0.9583, "loss": 0.0912}','[{"epoch": 1, "loss": 1.02, "val_accuracy": 0.62}, {"epoch": 40, "loss": 0.09, "val_accuracy": 0.96}]','0.1.0+g3e1f2ab','{"torch": "2.3.1", "onnx": "1.16.1", "onnxruntime": "1.18.0", "numpy": "1.26.4"}',1.7957657040123739243e+09,1.79576570401332449907e+09,'succeeded');
INSERT INTO "runs" VALUES('run-2','ds-69864d3563bf','iris','{"epochs": 25, "batch_size": 32, "lr": 0.005, "hidden": [32, 16], "seed": 0}','{"accuracy": 0.9515, "val_accuracy": 0.9432, "loss": 0.1377}','[{"epoch": 1, "loss": 0.31, "val_accuracy": 0.91}, {"epoch": 25, "loss": 0.14, "val_accuracy": 0.94}]','0.1.0+g3e1f2ab','{"torch": "2.3.1", "onnx": "1.16.1", "onnxruntime": "1.18.0", "numpy": "1.26.4"}',1.79576570401556444168e+09,1.7957657040162861347e+09,'succeeded');
INSERT INTO "runs" VALUES('run-3','ds-69864d3563bf','iris','{"epochs": 40, "batch_size": 32, "lr": 0.5, "hidden": [32, 16], "seed": 0}','{"loss": NaN}',NULL,'0.1.0+g3e1f2ab','{"torch": "2.3.1", "onnx": "1.16.1", "onnxruntime": "1.18.0", "numpy": "1.26.4"}',1.79576570401796936984e+09,1795765704.01874,'failed');
CREATE TABLE "versions" (
   "id" TEXT PRIMARY KEY,
   "model_name" TEXT NOT NULL REFERENCES "models"("name"),
   "version" TEXT NOT NULL,
   "run_id" TEXT NOT NULL REFERENCES "runs"("id"),
   "onnx_sha256" TEXT NOT NULL,
   "int8_sha256" TEXT,
   "chosen" TEXT NOT NULL,
   "quantization" TEXT,
   "metrics" TEXT,
   "created_at" REAL NOT NULL,
   "parent_version" TEXT REFERENCES "versions"("id")
);
INSERT INTO "versions" VALUES('iris:1','iris','1','run-1','0e4b5afb2b6fa2fff28f8373e8b45d01627ab22f44fa2e413311469893636e3f','ea5740d35b26cfd7f8e5932dd2a3632cb0446f0487ff1f814ac8ddeb601d41e9','int8','{"accuracy_drop": 0.0, "fp32_bytes": 3480, "int8_bytes": 1622}','{"accuracy": 0.9667}',1.79576570401469516754e+09,NULL);
INSERT INTO "versions" VALUES('iris:2','iris','2','run-2','18668b524c7697e5120524ab923e356dec61627b3b4e21869c25fda4775daf30','1eaa06ba20ac62ddccca40be8ab3fa432d119104a225399e5b800fc2e7e4e873','fp32','{"accuracy_drop": 0.0121, "fp32_bytes": 3480, "int8_bytes": 1622}','{"accuracy": 0.9515}',1.79576570401720714571e+09,'iris:1');
CREATE UNIQUE INDEX "idx_datasets_sha256"
    ON "datasets" ("sha256");
CREATE INDEX "idx_runs_dataset_id"
    ON "runs" ("dataset_id");
CREATE UNIQUE INDEX "idx_versions_model_name_version"
    ON "versions" ("model_name", "version");
CREATE INDEX "idx_versions_run_id"
    ON "versions" ("run_id");
CREATE INDEX "idx_bundles_version_id"
    ON "bundles" ("version_id");
CREATE UNIQUE INDEX "idx_deployments_command_id"
    ON "deployments" ("command_id");
CREATE INDEX "idx_deployments_agent_id"
    ON "deployments" ("agent_id");
CREATE INDEX "idx_deployments_bundle_sha256"
    ON "deployments" ("bundle_sha256");
CREATE INDEX "idx_deployments_target_sha256"
    ON "deployments" ("target_sha256");
CREATE UNIQUE INDEX "idx_drift_reports_agent_id_bundle_sha256_window_started_at"
    ON "drift_reports" ("agent_id", "bundle_sha256", "window", "started_at");
CREATE INDEX "idx_drift_reports_agent_id_model_version"
    ON "drift_reports" ("agent_id", "model", "version");
CREATE INDEX "idx_audit_at"
    ON "audit" ("at");
COMMIT;
