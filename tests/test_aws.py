"""SQS result sinks and SSM-held API keys against a real AWS API: moto's server, started here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from modalkit.config.schema import AuthConfig, QueueConfig
from modalkit.exceptions import ConfigError
from modalkit.sinks import deliver, make_sink
from modalkit.sinks.sqs import SQSSink
from modalkit.task_queue import SQSBackend, create_backend
from modalkit.web.auth import resolve_api_key
from tests.conftest import APPS, free_port, wait_for

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`moto.server` on a free port; a server that does not start fails the tests (they never skip)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"moto server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/moto-api/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def aws_env(moto_url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's standard environment pointed at moto, as a Modal secret would set it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SSM", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_env(moto_url).items():
        monkeypatch.setenv(name, value)
    return moto_url


def received(queue_url: str, count: int = 1) -> list[Any]:
    sqs = boto3.client("sqs")
    bodies: list[Any] = []
    while len(bodies) < count:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = answer.get("Messages", [])
        assert messages, f"only {len(bodies)} of {count} messages arrived"
        bodies += [json.loads(m["Body"]) for m in messages]
    return bodies


def test_a_queue_name_is_created_when_missing_and_gets_json(aws: str) -> None:
    name = f"results-{uuid.uuid4().hex}"
    sink = make_sink(QueueConfig(backend="sqs"))
    assert isinstance(sink, SQSSink)
    sink.push(name, {"job_id": "j1", "result": {"n": 1}})
    sink.push(name, {"job_id": "j2", "result": {"n": 2}})
    url = boto3.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]
    assert sorted(received(url, 2), key=str) == [
        {"job_id": "j1", "result": {"n": 1}},
        {"job_id": "j2", "result": {"n": 2}},
    ]


def test_a_queue_url_is_used_as_given(aws: str) -> None:
    url = boto3.client("sqs").create_queue(QueueName=f"byurl-{uuid.uuid4().hex}")["QueueUrl"]
    assert deliver(make_sink(QueueConfig(backend="sqs")), url, {"status": "succeeded"})
    assert received(url) == [{"status": "succeeded"}]


def test_a_fifo_queue_drops_a_redelivered_result(aws: str) -> None:
    sink = SQSSink()
    name = f"ordered-{uuid.uuid4().hex}.fifo"
    sink.push(name, {"n": 1})
    sink.push(name, {"n": 1})  # a retry after a lost acknowledgement
    sink.push(name, {"n": 2})
    assert received(sink.queue_url(name), 2) == [{"n": 1}, {"n": 2}]


def test_modalkit_sqs_backend_sends_the_string_it_is_given(aws: str) -> None:
    backend = create_backend("sqs", backend="sqs", broker_url=None)
    assert isinstance(backend, SQSBackend)
    name = f"mk-{uuid.uuid4().hex}"
    assert asyncio.run(backend.send_message(name, json.dumps({"status": "success"})))
    assert received(backend.sqs.queue_url(name)) == [{"status": "success"}]


def test_an_unreachable_sqs_makes_the_push_fail_so_deliver_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in aws_env(f"http://127.0.0.1:{free_port()}").items():
        monkeypatch.setenv(name, value)
    assert not deliver(SQSSink(), "nowhere", {"n": 1}, attempts=2, first_delay=0.01)
    assert not asyncio.run(SQSBackend().send_message("nowhere", "{}"))  # ModalKit's contract: False, no raise


def test_missing_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"queue_config\.backend: needs boto3.*pip install 'modalkit\[aws\]'"):
        make_sink(QueueConfig(backend="sqs"))
    with pytest.raises(ConfigError, match=r"auth_config\.ssm_key: needs boto3.*pip install 'modalkit\[aws\]'"):
        resolve_api_key(AuthConfig(ssm_key="/app/key"))


def test_no_region_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"queue_config\.backend: no AWS region is set: set AWS_DEFAULT_REGION"):
        make_sink(QueueConfig(backend="sqs"))


def put_parameter(value: str) -> str:
    name = f"/modalkit-test/{uuid.uuid4().hex}/api-key"
    boto3.client("ssm").put_parameter(Name=name, Value=value, Type="SecureString")
    return name


def test_the_api_key_is_read_from_ssm(aws: str) -> None:
    name = put_parameter("k-from-ssm")
    assert resolve_api_key(AuthConfig(ssm_key=name)) == "k-from-ssm"


def test_a_missing_parameter_names_the_key_and_the_fix(aws: str) -> None:
    with pytest.raises(ConfigError, match=r"app_settings\.auth_config\.ssm_key: the SSM parameter '/absent/key' does"):
        resolve_api_key(AuthConfig(ssm_key="/absent/key"))


def test_no_credentials_names_the_key_and_the_variables(
    aws: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"auth_config\.ssm_key: no AWS credentials.*AWS_ACCESS_KEY_ID"):
        resolve_api_key(AuthConfig(ssm_key="/app/key"))


def test_the_served_app_expects_the_key_from_ssm(aws: str, serve: Any) -> None:
    key = "k-" + uuid.uuid4().hex
    env = {**aws_env(aws), "MODALKIT_APP_SETTINGS__AUTH_CONFIG__SSM_KEY": put_parameter(key)}
    server = serve(APPS / "echo_app.py", APPS / "echo.yaml", env=env)
    predict = f"{server.url}/predict"
    assert httpx.post(predict, json={"text": "a"}, timeout=30).status_code == 401
    assert httpx.post(predict, json={"text": "a"}, headers={"x-api-key": "wrong"}, timeout=30).status_code == 401
    answer = httpx.post(predict, json={"text": "a"}, headers={"x-api-key": key}, timeout=30)
    assert answer.status_code == 200 and answer.json()["text"] == "a"
    assert key not in server.log.read_text()
