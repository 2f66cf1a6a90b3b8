"""The provisioned Grafana dashboards against what programs make of them: the generator's output, and
Grafana's own `Dashboard` TypeScript type (@grafana/schema, pinned in tests/grafana/package.json)
turned into a JSON schema by ts-json-schema-generator, validated with jsonschema Draft 7. `npm ci
--prefix tests/grafana` installs the tools; without them the schema test skips locally and fails
under CI=true. The static checks are tests/unit/test_grafana_dashboards.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jsonschema
import pytest

from tests.support.grafana import DASHBOARD_DIR, REPO, UIDS, generator_module, load_dashboards

NPM_DIR = REPO / "tests" / "grafana"
DASHBOARD_TYPES = "node_modules/@grafana/schema/dist/esm/raw/dashboard/x/dashboard_types.gen.d.ts"
BOARDS = load_dashboards()


@pytest.fixture(scope="session")
def dashboard_schema(tmp_path_factory) -> dict:
    """JSON schema of Grafana's Dashboard type, generated into a temp dir from the pinned npm packages."""
    generator = NPM_DIR / "node_modules" / ".bin" / "ts-json-schema-generator"
    if not generator.exists() or not (NPM_DIR / DASHBOARD_TYPES).exists() or not shutil.which("node"):
        message = "tests/grafana/node_modules missing: run `npm ci --prefix tests/grafana`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("grafana-schema") / "dashboard.schema.json"
    subprocess.run([str(generator), "--path", DASHBOARD_TYPES, "--type", "Dashboard", "--no-type-check",
                    "-o", str(out)], cwd=NPM_DIR, check=True, capture_output=True, timeout=120)
    return json.loads(out.read_text())


def test_committed_dashboards_equal_generated(tmp_path):
    subprocess.run([sys.executable, "-m", "grafana.generate", "--out", str(tmp_path)], cwd=REPO, check=True,
                   timeout=60)
    generated = sorted(p.name for p in tmp_path.glob("*.json"))
    assert generated == sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(f"{u}.json" for u in UIDS)
    for name in generated:
        assert (DASHBOARD_DIR / name).read_text() == (tmp_path / name).read_text(), (
            f"grafana/dashboards/{name} is stale: run `python -m grafana.generate`")


def without_prometheus_annotation_keys(board: dict) -> dict:
    """The board less the keys Grafana's Prometheus datasource reads from an annotation query, which
    the generic AnnotationQuery type does not list ("TODO.. this should just be a normal query target")."""
    keys = generator_module("time_panels").PROMETHEUS_ANNOTATION_KEYS
    annotations = [{k: v for k, v in a.items() if a["datasource"]["type"] != "prometheus" or k not in keys}
                   for a in board.get("annotations", {}).get("list", [])]
    return {**board, "annotations": {**board.get("annotations", {}), "list": annotations}}


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_validates_against_grafana_dashboard_type(uid, dashboard_schema):
    board = without_prometheus_annotation_keys(BOARDS[uid])
    errors = sorted(jsonschema.Draft7Validator(dashboard_schema).iter_errors(board), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_schema_rejects_a_misspelt_field(dashboard_schema):
    # The generated schema must be strict, or the test above proves nothing.
    board = {**BOARDS["nanogpt-mobile"], "panel": []}
    assert not jsonschema.Draft7Validator(dashboard_schema).is_valid(board)
