"""The retrain workflow: what it trains comes from repository variables, the demo only when
asked; it gates per pipeline, records the model with DVC and terminates an abandoned run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "retrain.yml"


def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps() -> list[dict]:
    return workflow()["jobs"]["retrain"]["steps"]


def step(name_start: str) -> dict:
    return next(s for s in steps() if s.get("name", "").startswith(name_start))


def test_the_workflow_gates_per_pipeline_then_records_the_model_and_opens_a_pull_request():
    data = workflow()
    assert data["on"]["schedule"][0]["cron"]
    inputs = data["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs["pipeline"]["options"]) == {"regular", "pretrained"}
    assert inputs["allow_demo"]["type"] == "boolean" and inputs["allow_demo"]["default"] is False
    scripts = "\n".join(s.get("run", "") for s in steps())
    order = ["python pipelines/compile.py", "--run-id-file kfp-run-id.txt", "whisper-moe kfp run",
             'python scripts/check_regression.py --new metrics.json --pipeline "$PIPELINE"',
             'python scripts/record_model.py record --run-uri "$run_uri" --dest "models/$PIPELINE"']
    positions = [scripts.index(command) for command in order]
    assert positions == sorted(positions)
    assert "dvc import-url" not in scripts
    pull_request = next(s for s in steps() if "create-pull-request" in s.get("uses", ""))
    paths = pull_request["with"]["add-paths"].splitlines()
    assert paths == ["metrics/accepted/${{ env.PIPELINE }}.json", "models/${{ env.PIPELINE }}.dvc",
                     "models/.gitignore"]
    text = WORKFLOW.read_text()
    assert "${{ secrets.KFP_HOST }}" in text and "${{ secrets.AWS_SECRET_ACCESS_KEY }}" in text
    assert "${{ secrets." not in scripts, "secrets reach scripts through env:, never inline"


def test_an_abandoned_kubeflow_run_is_terminated():
    terminate = step("Terminate the Kubeflow run")
    assert "cancelled()" in terminate["if"] and "failure()" in terminate["if"]
    assert "whisper-moe kfp terminate" in terminate["run"]
    assert "kfp-run-id.txt" in terminate["run"]
    wait = step("Run the ")
    assert "RETRAIN_TIMEOUT_MINUTES" in str(wait["timeout-minutes"])  # the wait ends before the job


def run_check(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """The 'Check what will be trained' step's script under bash, with these variables set."""
    env = {"PATH": os.environ["PATH"], "PIPELINE": "pretrained", "OUTPUT_S3_URI": "s3://models/runs",
           "DVC_REPO": "", "DVC_PATH": "", "DATA_S3_URI": "", "BASE_MODEL": "", "ALLOW_DEMO": "false"}
    env.update(variables)
    script = tmp_path / "check.sh"
    script.write_text(step("Check what will be trained")["run"])
    return subprocess.run(["bash", "-e", str(script)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.parametrize(("variables", "ok", "message"), [
    ({}, False, "this would train the demo model"),
    ({"DATA_S3_URI": "s3://data/sap"}, False, "no RETRAIN_BASE_MODEL"),
    ({"DATA_S3_URI": "s3://data/sap", "BASE_MODEL": "demo"}, False, "demo model"),
    ({"ALLOW_DEMO": "true"}, True, "allow_demo"),
    ({"DATA_S3_URI": "s3://data/sap", "BASE_MODEL": "openai/whisper-large-v2"}, True, ""),
    ({"DVC_REPO": "https://example.com/d.git", "DVC_PATH": "sap", "BASE_MODEL": "openai/whisper-large-v2"},
     True, ""),
    ({"DVC_REPO": "https://example.com/d.git", "BASE_MODEL": "openai/whisper-large-v2"}, False,
     "needs RETRAIN_DVC_PATH"),
    ({"DVC_REPO": "r", "DVC_PATH": "p", "DATA_S3_URI": "s3://d", "BASE_MODEL": "b"}, False, "not both"),
    ({"OUTPUT_S3_URI": "", "DATA_S3_URI": "s3://d", "BASE_MODEL": "b"}, False, "RETRAIN_OUTPUT_S3_URI"),
    ({"PIPELINE": "both", "DATA_S3_URI": "s3://d", "BASE_MODEL": "b"}, False, "expected pretrained or regular"),
])
def test_the_demo_is_refused_unless_asked(tmp_path, variables, ok, message):
    result = run_check(tmp_path, **variables)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    assert message in result.stdout


def test_releases_upload_a_pipeline_version_that_runs_can_reference():
    ci = yaml.safe_load((WORKFLOW.parent / "ci.yml").read_text())
    upload = next(s for s in ci["jobs"]["images"]["steps"] if s.get("name", "").startswith("Upload a pipeline version"))
    assert "refs/tags/v" in upload["if"]
    assert "kfp upload" in upload["run"] and '--version-name "${GITHUB_REF_NAME#v}"' in upload["run"]
    assert "--pipeline-version" in step("Run the ")["run"]
