"""The control plane's HTTP side against a real control plane started in-process, on SQLite
and Postgres: the dashboard's JSON API as the page reads it, keys and project scopes as on
the gRPC side, refusals that name the field, HTTPS with the gRPC side's certificate."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, jobs_pb2, jobs_pb2_grpc

from control_plane import ControlPlaneSettings, SettingsError
from control_plane.domain.access import ALL_PROJECTS, Role, api_key_id
from control_plane.settings import transport_problem
from tests.control_plane.harness import (
    FakeAgent,
    P,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    status,
    submit,
)
from tests.tls_certs import CertificateAuthority
from tests.web.web_harness import Http, make_key, web_control_plane


async def until(http: Http, path: str, check: Any, what: str, **params: str) -> Any:
    """GET path until check(body) holds (the scheduler and reports are asynchronous)."""
    for _ in range(250):
        body = await http.ok(path, **params)
        if check(body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {what}: {body}")


async def answer_log(agent: FakeAgent, attempt_id: str, *parts: bytes) -> None:
    request = await agent.expect("log_request")
    assert request.attempt_id == attempt_id
    for index, data in enumerate(parts):
        await agent.outbox.put(agent_pb2.AgentMessage(log_chunk=P.LogChunk(
            request_id=request.request_id, data=data, eof=index == len(parts) - 1)))


async def test_the_api_shows_the_fleet_a_placed_job_its_routing_and_its_log(
    database_url: str,
) -> None:
    async with web_control_plane(database_url) as (cp, clock, http), job_client(cp.port) as jobs:
        onprem = FakeAgent(cp.port, "onprem", [
            gpu_pool("h100", total=8),
            gpu_pool("l4", model="L4", mem=24, total=4, tier=P.PURCHASE_TYPE_SPOT),
        ])
        eu = FakeAgent(cp.port, "eu", [gpu_pool("a100", model="A100", total=4,
                                               tier=P.PURCHASE_TYPE_ON_DEMAND)],
                       region="europe-west4")
        await onprem.join()
        await eu.join()
        job = await submit(jobs, job_spec(project="vision", gpus=2, name="train"))
        launch = await onprem.expect("launch")
        onprem.pools[0] = gpu_pool("h100", total=8, free=6)
        await onprem.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))

        shown = await until(http, f"/api/jobs/{job.id}",
                            lambda b: b["job"]["phase"] == "running", "the job running")
        assert shown["job"]["dataplane"] == "onprem" and shown["job"]["pool"] == "h100"
        assert shown["job"]["spec"]["gpus"] == 2 and shown["job"]["spec"]["command"] == ["train.py"]
        [attempt] = shown["job"]["attempts"]
        assert (attempt["id"], attempt["dataplane"], attempt["phase"]) == (
            launch.attempt_id, "onprem", "running")
        assert [e["phase"] for e in shown["events"]][-1] == "running"
        explanation = shown["explanation"]
        assert explanation["summary"].startswith("running: ")
        candidates = {f"{c['dataplane']}/{c['pool']}": c for c in explanation["candidates"]}
        assert set(candidates) == {"onprem/h100", "onprem/l4", "eu/a100"}
        assert all(c["reason"] for c in candidates.values())
        assert candidates["onprem/l4"]["tier"] == "spot"

        grid = await http.ok("/api/dataplanes")
        planes = {d["name"]: d for d in grid["dataplanes"]}
        assert planes["eu"]["region"] == "europe-west4"
        onprem_view = planes["onprem"]
        assert (onprem_view["health"], onprem_view["state"], onprem_view["connected"]) == (
            "healthy", "active", True)
        pools = {p["name"]: p for p in onprem_view["pools"]}
        assert (pools["h100"]["tier"], pools["h100"]["gpu_free"], pools["h100"]["gpu_total"]) == (
            "reserved", 6, 8)
        assert (pools["l4"]["tier"], pools["l4"]["gpu_model"]) == ("spot", "L4")

        listed = await http.ok("/api/jobs")
        assert [(j["id"], j["dataplane"], j["phase"]) for j in listed["jobs"]] == [
            (job.id, "onprem", "running")]
        assert [j["id"] for j in (await http.ok("/api/jobs", phase="running"))["jobs"]] == [job.id]
        assert [j["id"] for j in (await http.ok("/api/jobs", phase="queued,failed"))["jobs"]] == []
        assert (await http.ok("/api/jobs", dataplane="eu"))["jobs"] == []
        assert (await http.ok("/api/jobs", project="nlp"))["jobs"] == []

        answering = asyncio.create_task(
            answer_log(onprem, launch.attempt_id, b"epoch 1 loss 0.9\n", b"epoch 2 loss 0.4\n"))
        log = await http.ok(f"/api/jobs/{job.id}/log")
        await answering
        assert log == {"attempt_id": launch.attempt_id, "dataplane": "onprem",
                       "text": "epoch 1 loss 0.9\nepoch 2 loss 0.4\n"}

        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).CordonDataplane(
                admin_pb2.CordonDataplaneRequest(name="eu", reason="kernel upgrade"))
        clock.advance(20)   # past stale_after (15 s)
        planes = {d["name"]: d for d in (await http.ok("/api/dataplanes"))["dataplanes"]}
        assert planes["eu"]["state"] == "cordoned"
        assert "kernel upgrade" in planes["eu"]["unavailable_because"]
        assert (planes["onprem"]["health"], planes["onprem"]["heartbeat_age_s"]) == ("stale", 20.0)

        await onprem.close()
        await eu.close()
        await until(http, "/api/dataplanes",
                    lambda b: not any(d["connected"] for d in b["dataplanes"]), "agents gone")
        gone = await http.get(f"/api/jobs/{job.id}/log")
        assert gone.status == 503 and "stays in its region" in gone.body["error"]
    with pytest.raises(aiohttp.ClientConnectionError):   # stopped with the control plane
        async with aiohttp.ClientSession() as session:
            await session.get(f"{http.base}/healthz")


async def test_the_job_list_pages_like_list_jobs(database_url: str) -> None:
    async with web_control_plane(database_url) as (cp, clock, http), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=1)])
        await agent.join()
        ids = []
        for i in range(5):
            ids.append((await submit(jobs, job_spec(name=f"job-{i}"))).id)
            clock.advance(1)   # jobs of one instant are ordered by id instead
        seen: list[str] = []
        token = ""
        while True:
            page = await http.ok("/api/jobs", page_size="2",
                                 **({"page_token": token} if token else {}))
            assert len(page["jobs"]) <= 2
            seen += [j["id"] for j in page["jobs"]]
            token = page["next_page_token"]
            if not token:
                break
        assert seen == list(reversed(ids))   # newest first, each once
        # The tokens are ListJobs' own: one from the gRPC side pages here too.
        grpc_page = await jobs.List(jobs_pb2.ListJobsRequest(page_size=3))
        rest = await http.ok("/api/jobs", page_token=grpc_page.next_page_token)
        assert [j["id"] for j in rest["jobs"]] == seen[3:]
        await agent.close()


async def test_bad_input_is_refused_with_json_naming_the_field(database_url: str) -> None:
    async with web_control_plane(database_url) as (cp, _, http), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=1)])
        await agent.join()
        await submit(jobs, job_spec())
        queued = await submit(jobs, job_spec())   # waits: the one GPU is taken
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("/api/jobs/j-nothing", {}, 404, "job_id: no job 'j-nothing'"),
            ("/api/jobs/not%20an%20id", {}, 400, "job_id: 'not an id' is not an id"),
            ("/api/jobs/j-nothing/log", {}, 404, "job_id: no job 'j-nothing'"),
            ("/api/jobs", {"phase": "sleeping"}, 400, "phase: 'sleeping' is not a job phase"),
            ("/api/jobs", {"project": "Not_A_Name"}, 400, "project: 'Not_A_Name' is not a valid"),
            ("/api/jobs", {"dataplane": "-x"}, 400, "dataplane: '-x' is not a valid name"),
            ("/api/jobs", {"page_size": "0"}, 400, "page_size: '0' is not a number from 1"),
            ("/api/jobs", {"page_size": "1001"}, 400, "page_size: '1001'"),
            ("/api/jobs", {"page_size": "ten"}, 400, "page_size: 'ten'"),
            ("/api/jobs", {"page_token": "garbage"}, 400, "page_token: not a token"),
            ("/api/jobs", {"colour": "red"}, 400, "colour: not a filter of the job list"),
            ("/api/jobs", {"project": ["a", "b"]}, 400, "project: given 2 times"),
            (f"/api/jobs/{queued.id}/log", {"tail_bytes": "0"}, 400, "tail_bytes: '0'"),
            (f"/api/jobs/{queued.id}/log", {}, 409, f"job {queued.id} has no attempt yet"),
            ("/api/policy/versions/0", {}, 400, "version: '0' is not a policy version"),
            ("/api/policy/versions/7", {}, 404, "version: no policy version 7"),
            ("/api/nothing", {}, 404, "path: GET /api/nothing"),
            ("/static/../server.py", {}, 404, "path:"),
        ]
        for path, params, code, message in cases:
            answer = await http.get(path, **params)
            assert (answer.status, answer.headers["Content-Type"].split(";")[0]) == (
                code, "application/json"), (path, params, answer.body)
            assert message in answer.body["error"], (path, params, answer.body)
        async with http.session.post(f"{http.base}/api/jobs", json={}) as posted:
            assert posted.status == 405   # read-only: no write endpoint
        assert queued.phase == P.JOB_PHASE_QUEUED
        await agent.close()


async def test_keys_roles_and_project_scopes_as_on_the_grpc_side(database_url: str) -> None:
    async with web_control_plane(database_url, auth=True) as (cp, clock, http):
        admin_key = await make_key(database_url, clock, "root", Role.ADMIN, ALL_PROJECTS)
        viewer_key = await make_key(database_url, clock, "vision-viewer", Role.VIEWER, "vision")
        submitter_key = await make_key(database_url, clock, "nlp-ci", Role.SUBMITTER, "nlp")
        admin_md = (("authorization", f"Bearer {admin_key}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            enrolled = await admin.EnrollDataplane(admin_pb2.EnrollDataplaneRequest(
                name="onprem", region="us-east-1", cloud="test"), metadata=admin_md)
            agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")],
                              token=enrolled.join_token, admin_key=admin_key)
            await agent.join()
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            vision = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="vision")),
                                        metadata=admin_md)).job
            nlp = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="nlp")),
                                     metadata=admin_md)).job

            # Without a key, or with a wrong one: 401, and the page itself still loads.
            for path in ("/api/whoami", "/api/jobs", "/api/dataplanes", "/api/policy",
                         f"/api/jobs/{vision.id}", "/metrics"):
                answer = await http.get(path)
                assert answer.status == 401, path
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                assert "authorization: missing" in answer.body["error"]
            forged = admin_key[:-6] + "AAAAAA"
            wrong = await http.as_key(forged).get("/api/jobs")
            assert wrong.status == 401 and forged.split("_")[-1] not in wrong.body["error"]
            for path in ("/api/jobs", "/api/dataplanes"):   # a key is never read from a URL
                assert (await http.get(path, api_key=admin_key)).status == 401
            for path in ("/", "/healthz", "/static/app.js", "/static/app.css"):
                assert (await http.get(path)).status == 200, path

            # A viewer of vision: its project's jobs only; another's job is not there at all.
            viewer = http.as_key(viewer_key)
            me = await viewer.ok("/api/whoami")
            assert (me["role"], me["projects"]) == ("viewer", ["vision"])
            assert me["name"] == "vision-viewer"
            assert [j["id"] for j in (await viewer.ok("/api/jobs"))["jobs"]] == [vision.id]
            assert (await viewer.ok(f"/api/jobs/{vision.id}"))["job"]["project"] == "vision"
            hidden = await viewer.get(f"/api/jobs/{nlp.id}")
            assert (hidden.status, hidden.body["error"]) == (404, f"job_id: no job {nlp.id!r}")
            assert (await viewer.get(f"/api/jobs/{nlp.id}/log")).status == 404
            denied = await viewer.get("/api/jobs", project="nlp")
            assert denied.status == 403
            assert "'vision-viewer' (viewer of vision) may not read in project 'nlp'" in (
                denied.body["error"])
            assert [d["name"] for d in (await viewer.ok("/api/dataplanes"))["dataplanes"]] == [
                "onprem"]
            assert (await viewer.ok("/api/policy"))["current"] is None

            submitter = http.as_key(submitter_key)
            assert [j["id"] for j in (await submitter.ok("/api/jobs"))["jobs"]] == [nlp.id]
            everyone = await http.as_key(admin_key).ok("/api/jobs")
            assert {j["id"] for j in everyone["jobs"]} == {vision.id, nlp.id}

            # A revoked key stops working here as on the gRPC side.
            await admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(
                id=api_key_id(viewer_key) or ""), metadata=admin_md)
            revoked = await viewer.get("/api/jobs")
            assert revoked.status == 401 and "was revoked" in revoked.body["error"]
            await agent.close()


async def test_metrics_need_a_viewer_key_and_are_prometheus_text(sqlite_url: str) -> None:
    async with web_control_plane(sqlite_url, auth=True) as (_, clock, http):
        viewer_key = await make_key(sqlite_url, clock, "scraper", Role.VIEWER, "vision")
        assert (await http.get("/metrics")).status == 401
        scraped = await http.as_key(viewer_key).get("/metrics")
        assert scraped.status == 200, scraped.body
        assert scraped.headers["Content-Type"].startswith("text/plain")
        assert "# TYPE" in scraped.body


async def test_https_with_the_grpc_sides_certificate(sqlite_url: str, tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    server = ca.server("localhost", "127.0.0.1")
    port_file = tmp_path / "http.port"
    trusting = ssl.create_default_context(cafile=str(ca.cert))
    async with web_control_plane(
        sqlite_url, insecure=False, tls_cert=str(server.cert), tls_key=str(server.key),
        http_port_file=str(port_file),
    ) as (cp, _, http):
        assert port_file.read_text() == f"{cp.http_port}\n"
        assert http.base.startswith("https://")
        http.ssl = trusting
        assert (await http.ok("/healthz")) == {"status": "serving"}
        with pytest.raises(aiohttp.ClientError):   # a client not trusting the CA
            await http.session.get(f"{http.base}/healthz")
        with pytest.raises(aiohttp.ClientError):   # plaintext to the TLS port
            await http.session.get(f"http://127.0.0.1:{cp.http_port}/healthz")


async def test_http_is_off_by_default_and_no_auth_stays_on_loopback(sqlite_url: str) -> None:
    async with control_plane(sqlite_url) as (cp, _):
        assert (cp.http, cp.http_port) == (None, 0)
    problem = transport_problem(ControlPlaneSettings(
        auth=False, insecure=True, listen="127.0.0.1:0", http_listen="0.0.0.0:8080"))
    assert problem is not None and "--http-listen is 0.0.0.0:8080" in problem
    with pytest.raises(SettingsError, match="--http-listen: 'nonsense' is not HOST:PORT"):
        async with control_plane(sqlite_url, auth=True, http_listen="nonsense"):
            pass
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(SettingsError, match=f"--http-listen: cannot bind {busy}"):
            async with control_plane(sqlite_url, http_listen=busy):
                pass
