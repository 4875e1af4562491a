"""`whisper-moe kfp upload|run|schedule` against a local HTTP server that records what the
real kfp.Client sends (method, path, query, body), so a malformed request fails here.

The server answers like Kubeflow Pipelines' v2beta1 REST API with the few fields the
client reads; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

pytest.importorskip("kfp")
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")

from test_storage import moto_s3, moto_server  # noqa: F401, E402  (S3 for --metrics-out)

from whisper_moe_kfp import client as kfp_cli  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPILED = REPO_ROOT / "pipelines" / "compiled"


class FakeKfpApi:
    """Recorded requests and canned answers of a Kubeflow Pipelines API server."""

    def __init__(self):
        self.requests: list[dict] = []
        self.existing_pipeline_id: str | None = None
        self.run_state = "SUCCEEDED"

    def answer(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict]:
        api = "/apis/v2beta1"
        if method == "GET" and path == f"{api}/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == f"{api}/pipelines":
            if self.existing_pipeline_id:
                return 200, {"pipelines": [{"pipeline_id": self.existing_pipeline_id,
                                            "display_name": "whisper-moe-regular"}], "total_size": 1}
            return 200, {"total_size": 0}
        if method == "POST" and path == f"{api}/pipelines/upload":
            return 200, {"pipeline_id": "pipeline-1", "display_name": query["name"][0]}
        if method == "POST" and path == f"{api}/pipelines/upload_version":
            return 200, {"pipeline_id": query["pipelineid"][0], "pipeline_version_id": "version-2",
                         "display_name": query["name"][0]}
        if method == "GET" and path == f"{api}/experiments":
            return 200, {"total_size": 0}
        if method == "POST" and path == f"{api}/experiments":
            return 200, {"experiment_id": "experiment-1", **json.loads(body)}
        if method == "POST" and path == f"{api}/runs":
            return 200, {"run_id": "run-1", "state": "PENDING", **json.loads(body)}
        if method == "GET" and path == f"{api}/runs/run-1":
            return 200, {"run_id": "run-1", "state": self.run_state}
        if method == "GET" and path == f"{api}/pipelines/pipeline-7/versions":
            wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            known = {"0.2.0": "version-0.2.0"}
            if wanted in known:
                return 200, {"pipeline_versions": [{"pipeline_id": "pipeline-7", "display_name": wanted,
                                                    "pipeline_version_id": known[wanted]}], "total_size": 1}
            return 200, {"total_size": 0}
        if method == "POST" and path == f"{api}/runs/run-1:terminate":
            return 200, {}
        if method == "POST" and path == f"{api}/recurringruns":
            return 200, {"recurring_run_id": "recurring-1", **json.loads(body)}
        return 404, {"message": f"no route {method} {path}", "code": 5}

    def find(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


@pytest.fixture
def kfp_api():
    """A threaded HTTP server on 127.0.0.1 playing the Kubeflow Pipelines API."""
    api = FakeKfpApi()

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlparse(self.path)
            query = parse_qs(url.query)
            api.requests.append({"method": self.command, "path": url.path, "query": query,
                                 "body": body, "content_type": self.headers.get("Content-Type", ""),
                                 "authorization": self.headers.get("Authorization")})
            status, payload = api.answer(self.command, url.path, query, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = handle_one

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield api
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_user_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp/context.json; keep the user's out of the tests."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for variable in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                     "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KFP_TOKEN"):
        monkeypatch.delenv(variable, raising=False)


def run_cli(argv: list[str]) -> int:
    """The real command line's parser and handler, without main's error-to-exit-code step."""
    from whisper_moe.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.handler(args)


def multipart_file(request: dict) -> bytes:
    """The uploaded file's bytes from a multipart/form-data body."""
    boundary = request["content_type"].split("boundary=")[1].encode()
    for part in request["body"].split(b"--" + boundary):
        if b'name="uploadfile"' in part:
            return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    raise AssertionError("no uploadfile part in the upload request")


def test_upload_sends_the_compiled_spec_as_a_new_pipeline(kfp_api):
    assert run_cli(["kfp", "upload", "--host", kfp_api.host, "--pipeline", "regular"]) == 0

    [lookup] = kfp_api.find("GET", "/apis/v2beta1/pipelines")
    predicate = json.loads(lookup["query"]["filter"][0])["predicates"][0]
    assert predicate["key"] == "display_name" and predicate["stringValue"] == "whisper-moe-regular"
    [upload] = kfp_api.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == ["whisper-moe-regular"]
    assert upload["content_type"].startswith("multipart/form-data")
    assert multipart_file(upload) == (COMPILED / "regular_moe.yaml").read_bytes()


def test_upload_of_a_known_pipeline_adds_a_version(kfp_api):
    kfp_api.existing_pipeline_id = "pipeline-7"
    assert run_cli(["kfp", "upload", "--host", kfp_api.host, "--pipeline", "regular",
                    "--version-name", "v-test"]) == 0

    assert not kfp_api.find("POST", "/apis/v2beta1/pipelines/upload")
    [upload] = kfp_api.find("POST", "/apis/v2beta1/pipelines/upload_version")
    assert upload["query"]["pipelineid"] == ["pipeline-7"]
    assert upload["query"]["name"] == ["v-test"]
    assert multipart_file(upload) == (COMPILED / "regular_moe.yaml").read_bytes()


def test_run_sends_params_yaml_overrides_and_data_arguments(kfp_api, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("train:\n  epochs: 7\n")
    code = run_cli(["kfp", "run", "--host", kfp_api.host, "--namespace", "team-asr",
                    "--pipeline", "regular", "--params", str(params_file),
                    "-S", "train.lr=0.0003", "-S", "model.num_experts=6",
                    "--dvc-repo", "https://example.com/data.git", "--dvc-path", "data/sap",
                    "--service-account", "whisper-moe-pipeline-runner", "--run-name", "nightly"])
    assert code == 0
    assert "run id: run-1" in capsys.readouterr().out

    assert not kfp_api.find("GET", "/apis/v2beta1/healthz")  # namespace given: no probing
    [experiments] = kfp_api.find("GET", "/apis/v2beta1/experiments")
    assert experiments["query"]["namespace"] == ["team-asr"]
    [experiment] = kfp_api.find("POST", "/apis/v2beta1/experiments")
    assert json.loads(experiment["body"]) == {"display_name": "whisper-moe", "namespace": "team-asr"}
    [run] = kfp_api.find("POST", "/apis/v2beta1/runs")
    body = json.loads(run["body"])
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == "experiment-1"
    assert body["service_account"] == "whisper-moe-pipeline-runner"
    parameters = body["runtime_config"]["parameters"]
    assert parameters["epochs"] == 7 and parameters["learning_rate"] == 0.0003
    assert parameters["num_experts"] == 6
    assert parameters["dvc_repo"] == "https://example.com/data.git"
    assert parameters["dvc_path"] == "data/sap"
    sent_params = yaml.safe_load(parameters["params_yaml"])
    assert sent_params["train"]["epochs"] == 7 and sent_params["train"]["lr"] == 0.0003
    # the package itself travels in the run: pipeline spec plus the Kubernetes platform spec
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "whisper-moe-regular"
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]
    assert "nodeAffinity" in executors["executors"]["exec-train-moe"]


def test_run_wait_writes_the_published_metrics(kfp_api, tmp_path, moto_s3):  # noqa: F811
    from whisper_moe import storage

    pointer = {"uri": "s3://results/runs/run-1/model", "metrics": {"moe": {"wer": 0.25}}, "run": "run-1"}
    storage.upload_json(pointer, "s3://results/runs/run-1/pointer.json")
    metrics_out = tmp_path / "out" / "metrics.json"
    code = run_cli(["kfp", "run", "--host", kfp_api.host, "--pipeline", "pretrained",
                    "--params", str(defaults_only_params(tmp_path)), "--output-s3-uri", "s3://results/runs",
                    "--wait", "--metrics-out", str(metrics_out), "--no-cache", "--token", "t0ken",
                    "--run-id-file", str(tmp_path / "run-id.txt")])
    assert code == 0
    assert kfp_api.find("GET", "/apis/v2beta1/healthz")  # no namespace: the client probes the server
    [run] = kfp_api.find("POST", "/apis/v2beta1/runs")
    assert run["authorization"] == "Bearer t0ken"
    body = json.loads(run["body"])
    assert body["runtime_config"]["parameters"]["output_s3_uri"] == "s3://results/runs"
    tasks = body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert all(task["cachingOptions"] == {} for task in tasks.values())  # --no-cache: off everywhere
    assert kfp_api.find("GET", "/apis/v2beta1/runs/run-1")
    written = json.loads(metrics_out.read_text())
    assert written["state"] == "SUCCEEDED" and written["moe"] == {"wer": 0.25}
    assert written["model_pointer"] == "s3://results/runs/run-1/pointer.json"
    assert written["model_uri"] == "s3://results/runs/run-1/model"
    assert written["pipeline"] == "pretrained"  # the gate picks this pipeline's baseline
    assert written["run_uri"] == "s3://results/runs/run-1"  # what record_model.py versions
    assert (tmp_path / "run-id.txt").read_text().strip() == "run-1"


def test_terminate_stops_the_run(kfp_api, capsys):
    assert run_cli(["kfp", "terminate", "--host", kfp_api.host, "--namespace", "ns", "--run-id", "run-1"]) == 0
    assert kfp_api.find("POST", "/apis/v2beta1/runs/run-1:terminate")
    assert "termination requested" in capsys.readouterr().out


def test_run_wait_fails_when_the_run_fails(kfp_api, tmp_path):
    kfp_api.run_state = "FAILED"
    code = run_cli(["kfp", "run", "--host", kfp_api.host, "--namespace", "ns", "--pipeline", "regular",
                    "--params", str(defaults_only_params(tmp_path)), "--wait"])
    assert code == 1


def test_schedule_creates_a_cron_recurring_run_one_at_a_time(kfp_api, tmp_path):
    code = run_cli(["kfp", "schedule", "--host", kfp_api.host, "--namespace", "ns",
                    "--pipeline", "regular", "--params", str(defaults_only_params(tmp_path)),
                    "--cron", "0 3 * * 1", "-S", "mode=quick"])
    assert code == 0
    [recurring] = kfp_api.find("POST", "/apis/v2beta1/recurringruns")
    body = json.loads(recurring["body"])
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "whisper-moe-regular"
    assert body["experiment_id"] == "experiment-1"
    assert body["runtime_config"]["parameters"]["mode"] == "quick"
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "whisper-moe-regular"


def test_server_errors_become_one_clear_message(kfp_api, tmp_path):
    with pytest.raises(kfp_cli.KfpCommandError, match=r"answered 404 .*no route .*check --host"):
        run_cli(["kfp", "upload", "--host", kfp_api.host + "/wrong", "--namespace", "ns",
                 "--pipeline", "regular"])


def test_run_refuses_a_key_that_does_not_exist_before_sending(kfp_api, tmp_path):
    with pytest.raises(ValueError, match=r"-S: unknown parameter 'regular'"):
        run_cli(["kfp", "run", "--host", kfp_api.host, "--namespace", "ns", "--pipeline", "regular",
                 "--params", str(defaults_only_params(tmp_path)), "-S", "regular.num_experts=8"])
    assert not kfp_api.find("POST", "/apis/v2beta1/runs")


def test_cron_and_argument_checks():
    assert kfp_cli.six_field_cron("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(kfp_cli.KfpCommandError, match="6 fields"):
        kfp_cli.six_field_cron("daily")
    with pytest.raises(kfp_cli.KfpCommandError, match="needs --wait"):
        run_cli(["kfp", "run", "--pipeline", "regular", "--metrics-out", "m.json"])


def defaults_only_params(folder):
    """A parameter file that sets nothing, so the built-in defaults apply."""
    path = folder / "defaults.yaml"
    path.write_text("{}\n")
    return path


def test_a_run_and_a_schedule_reference_an_uploaded_pipeline_version(kfp_api, tmp_path):
    kfp_api.existing_pipeline_id = "pipeline-7"
    params = str(defaults_only_params(tmp_path))
    assert run_cli(["kfp", "run", "--host", kfp_api.host, "--namespace", "ns", "--pipeline", "regular",
                    "--params", params, "--pipeline-version", "0.2.0"]) == 0
    [run] = kfp_api.find("POST", "/apis/v2beta1/runs")
    body = json.loads(run["body"])
    assert body["pipeline_version_reference"] == {"pipeline_id": "pipeline-7",
                                                  "pipeline_version_id": "version-0.2.0"}
    assert "pipeline_spec" not in body  # the server's copy runs, not one sent with the run
    assert "params_yaml" in body["runtime_config"]["parameters"]

    assert run_cli(["kfp", "schedule", "--host", kfp_api.host, "--namespace", "ns", "--pipeline", "regular",
                    "--params", params, "--cron", "0 3 * * 1", "--pipeline-version", "0.2.0"]) == 0
    [recurring] = kfp_api.find("POST", "/apis/v2beta1/recurringruns")
    assert json.loads(recurring["body"])["pipeline_version_reference"]["pipeline_version_id"] == "version-0.2.0"

    with pytest.raises(kfp_cli.KfpCommandError, match="has no version '9.9.9'"):
        run_cli(["kfp", "run", "--host", kfp_api.host, "--namespace", "ns", "--pipeline", "regular",
                 "--params", params, "--pipeline-version", "9.9.9"])
