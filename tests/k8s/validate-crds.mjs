// Validate prometheus-operator custom resources against the CRD schemas of the pinned
// @kubernetes-models/prometheus-operator (tests/integration/test_k8s.py runs this).
// stdin: a JSON array of documents; stdout: a JSON array of {kind, name, errors}, one per document.
// The CRD schemas check types, enums, patterns and required fields; like the API server's
// structural schemas they do not reject unknown fields.
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { AlertmanagerConfig } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1/AlertmanagerConfig";

const MODELS = {
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1alpha1/AlertmanagerConfig": AlertmanagerConfig,
};

const results = JSON.parse(readFileSync(0, "utf8")).map((doc) => {
  const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
  const result = { kind: doc.kind, name: doc.metadata?.name, errors: [] };
  if (!Model) {
    result.errors.push(`no CRD model for ${doc.apiVersion} ${doc.kind}`);
    return result;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    result.errors.push(e.message);
  }
  return result;
});
process.stdout.write(JSON.stringify(results));
