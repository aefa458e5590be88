"""`fleet policy ...` and `fleet jobs explain` against the fake control plane."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import grpc
import pytest
from fleet.v1 import admin_pb2, types_pb2
from typer.testing import CliRunner, Result

from fleet_cli.main import app
from tests.cli.fakes import Failure, FakeFleet

# A real document (the fake server does not parse it; the CLI passes it through as is).
POLICY = """\
# routing for the ML org
version: 1
rules:
  - name: eu-residency
    match: {projects: [ml]}
    regions: [europe-west4]
    tiers: [reserved, spot]
"""

# What the real server answers for a bad document: one problem per line.
PROBLEMS = (
    "policy.yaml:5:12: rules[0].match.projects: expected a list of names, got a string\n"
    "policy.yaml:7:21: rules[0].tiers[1]: 'cheap' is not a tier (reserved, on_demand, spot)"
)

RESERVED, ON_DEMAND, SPOT = (
    types_pb2.PURCHASE_TYPE_RESERVED,
    types_pb2.PURCHASE_TYPE_ON_DEMAND,
    types_pb2.PURCHASE_TYPE_SPOT,
)


def fleet(address: str, *args: str, stdin: str | None = None, user: str = "alice") -> Result:
    # Wide enough that rich tables never wrap a cell the tests look for.
    runner = CliRunner(
        env={"COLUMNS": "250", "FLEET_ADDRESS": None, "FLEET_TLS_CA": None, "USER": user}
    )
    return runner.invoke(app, ["--address", address, "--insecure", *args], input=stdin)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "ml-routing.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def row_of(output: str, cell: str) -> str:
    return next(line for line in output.splitlines() if cell in line)


def header_value(output: str, label: str) -> str:
    """The value beside a label in the lines above a table ('rule    eu-residency')."""
    line = next(line for line in output.splitlines() if line.startswith(f"{label}  "))
    return line.removeprefix(label).strip()


def cells(row: str) -> list[str]:
    """The cells of one rich table row, as printed."""
    return [cell.strip() for cell in row.strip().strip("│").split("│")]


# -- apply ---------------------------------------------------------------------------------


def test_apply_sends_the_document_and_prints_the_new_version(
    fake_fleet: FakeFleet, policy_file: Path
) -> None:
    fake_fleet.add_policy_version("rules: []\n")
    result = fleet(
        fake_fleet.address, "policy", "apply", "-f", str(policy_file), "--comment", "EU only"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "applied policy version 2"
    request = fake_fleet.applies[0]
    assert request.document == POLICY
    assert request.comment == "EU only"
    assert request.author == f"alice@{socket.gethostname()}"
    assert request.dry_run is False
    assert request.replay_jobs == 0


def test_apply_with_an_author_prints_the_version_as_json(
    fake_fleet: FakeFleet, policy_file: Path
) -> None:
    args = ("-o", "json", "policy", "apply", "--file", str(policy_file), "--author", "ops-bot")
    result = fleet(fake_fleet.address, *args)
    assert result.exit_code == 0, result.output
    assert fake_fleet.applies[0].author == "ops-bot"
    applied = json.loads(result.stdout)
    assert applied["version"] == "1"  # uint64: a string in proto JSON
    assert applied["author"] == "ops-bot"
    assert applied["document"] == POLICY


def test_apply_reads_stdin_for_dash(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "policy", "apply", "-f", "-", stdin=POLICY)
    assert result.exit_code == 0, result.output
    assert fake_fleet.applies[0].document == POLICY


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing.yaml", "No such file or directory"),
        (".", "Is a directory"),
        ("latin1.yaml", "not UTF-8 text"),
    ],
)
def test_apply_of_an_unreadable_file_exits_2_naming_it_before_any_call(
    fake_fleet: FakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, reason: str
) -> None:
    (tmp_path / "latin1.yaml").write_bytes("comment: caf\xe9\n".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    result = fleet(fake_fleet.address, "policy", "apply", "-f", name)
    assert result.exit_code == 2, result.output
    assert f"cannot read '{name}'" in result.stderr
    assert reason in result.stderr
    assert "--file" in result.stderr
    assert fake_fleet.applies == []


def test_an_invalid_policy_prints_every_problem_verbatim_and_exits_2(
    fake_fleet: FakeFleet, policy_file: Path
) -> None:
    fake_fleet.failures["ApplyPolicy"] = Failure(grpc.StatusCode.INVALID_ARGUMENT, PROBLEMS)
    result = fleet(fake_fleet.address, "policy", "apply", "-f", str(policy_file))
    assert result.exit_code == 2
    assert result.stdout == ""
    first, *problems = result.stderr.splitlines()
    assert first.startswith("error: ") and str(policy_file) in first
    assert problems == PROBLEMS.splitlines()


def test_a_failed_precondition_exits_2(fake_fleet: FakeFleet, policy_file: Path) -> None:
    message = "policy version 4 was applied meanwhile; fetch it and apply again"
    fake_fleet.failures["ApplyPolicy"] = Failure(grpc.StatusCode.FAILED_PRECONDITION, message)
    result = fleet(fake_fleet.address, "policy", "apply", "-f", str(policy_file))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"


# -- dry run -------------------------------------------------------------------------------


def test_dry_run_prints_how_many_jobs_were_replayed_and_each_change(
    fake_fleet: FakeFleet, policy_file: Path
) -> None:
    fake_fleet.dry_run_replayed = 50
    fake_fleet.dry_run_changes = [
        admin_pb2.RoutingChange(
            job_id="job-12", project="ml", name="train", before="us-east/a100",
            after="eu-north/h100-spot", why="rule eu-residency: region us-east1 not allowed",
        ),
        admin_pb2.RoutingChange(
            job_id="job-13", project="ml", before="eu-west/h100",
            after="waits: no allowed pool has 16 free GPUs", why="rules[0].require.regions",
        ),
    ]  # fmt: skip
    args = ("policy", "apply", "-f", str(policy_file), "--dry-run", "--replay", "50")
    result = fleet(fake_fleet.address, *args)
    assert result.exit_code == 0, result.output
    request = fake_fleet.applies[0]
    assert request.dry_run is True and request.replay_jobs == 50
    assert fake_fleet.policy_versions == []  # nothing applied
    out = result.stdout
    assert "replayed 50 recent jobs; 2 jobs would route differently" in out
    assert cells(row_of(out, "job-12")) == [
        "job-12", "ml", "train", "us-east/a100", "eu-north/h100-spot",
        "rule eu-residency: region us-east1 not allowed",
    ]  # fmt: skip
    assert cells(row_of(out, "job-13")) == [
        "job-13", "ml", "-", "eu-west/h100", "waits: no allowed pool has 16 free GPUs",
        "rules[0].require.regions",
    ]  # fmt: skip

    result = fleet(fake_fleet.address, "-o", "json", *args)
    response = json.loads(result.stdout)
    assert response["replayed"] == 50
    assert [c["job_id"] for c in response["changes"]] == ["job-12", "job-13"]
    assert "applied" not in response


def test_dry_run_without_changes_says_so(fake_fleet: FakeFleet, policy_file: Path) -> None:
    fake_fleet.dry_run_replayed = 1
    result = fleet(fake_fleet.address, "policy", "apply", "-f", str(policy_file), "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "replayed 1 recent job; no job would route differently"
    assert fake_fleet.applies[0].replay_jobs == 0  # the server's default


def test_replay_without_dry_run_exits_2_before_any_call(
    fake_fleet: FakeFleet, policy_file: Path
) -> None:
    result = fleet(fake_fleet.address, "policy", "apply", "-f", str(policy_file), "--replay", "9")
    assert result.exit_code == 2
    assert "--replay" in result.stderr and "--dry-run" in result.stderr
    assert fake_fleet.applies == []


# -- history, show, rollback ---------------------------------------------------------------


def test_history_lists_versions_newest_first_and_marks_the_current_one(
    fake_fleet: FakeFleet,
) -> None:
    fake_fleet.add_policy_version("a: 1\n", "alice@laptop", "first [draft]")
    fake_fleet.add_policy_version("a: 2\n", "bob@ci", "")
    result = fleet(fake_fleet.address, "policy", "history")
    assert result.exit_code == 0, result.output
    rows = [cells(line) for line in result.stdout.splitlines() if "@" in line]
    assert rows == [
        ["*", "2", "2026-01-01T02:00:00Z", "bob@ci", "-"],
        ["", "1", "2026-01-01T01:00:00Z", "alice@laptop", "first [draft]"],
    ]

    result = fleet(fake_fleet.address, "-o", "json", "policy", "history")
    versions = json.loads(result.stdout)
    assert [v["version"] for v in versions] == ["2", "1"]
    assert versions[1]["comment"] == "first [draft]"


def test_history_before_any_apply_says_the_default_is_in_force(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "policy", "history")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no policy applied yet: the built-in default is in force"
    result = fleet(fake_fleet.address, "-o", "json", "policy", "history")
    assert json.loads(result.stdout) == []


def test_show_writes_the_document_as_it_was_applied(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_policy_version(POLICY)
    fake_fleet.add_policy_version("rules: []  # no trailing newline")
    result = fleet(fake_fleet.address, "policy", "show")
    assert result.exit_code == 0, result.output
    assert result.stdout == "rules: []  # no trailing newline"
    result = fleet(fake_fleet.address, "policy", "show", "1")
    assert result.stdout == POLICY
    assert [r.version for r in fake_fleet.policy_gets] == [0, 1]

    result = fleet(fake_fleet.address, "-o", "json", "policy", "show", "1")
    assert json.loads(result.stdout)["document"] == POLICY


def test_show_of_an_unknown_version_exits_1(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "policy", "show", "7")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: policy version 7 not found"


def test_rollback_says_which_new_version_holds_which_old_document(fake_fleet: FakeFleet) -> None:
    for document in ("a: 1\n", "a: 2\n", "a: 3\n"):
        fake_fleet.add_policy_version(document)
    result = fleet(fake_fleet.address, "policy", "rollback", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "rolled back: version 4 now holds the document of version 1"
    assert fake_fleet.rollbacks[0].version == 1
    assert fake_fleet.rollbacks[0].author == f"alice@{socket.gethostname()}"
    assert fake_fleet.policy_versions[-1].document == "a: 1\n"

    args = ("-o", "json", "policy", "rollback", "2", "--author", "bob")
    result = fleet(fake_fleet.address, *args)
    assert fake_fleet.rollbacks[1].author == "bob"
    assert json.loads(result.stdout)["version"] == "5"


# -- explain -------------------------------------------------------------------------------


def candidate(
    dataplane: str, pool: str, region: str, tier: int, chosen: bool, reason: str
) -> admin_pb2.CandidateExplanation:
    return admin_pb2.CandidateExplanation(
        dataplane=dataplane, pool=pool, region=region, purchase_type=tier,  # type: ignore[arg-type]
        chosen=chosen, reason=reason,
    )  # fmt: skip


EXPLANATION = admin_pb2.Explanation(
    policy_version=3,
    rule="eu-residency",
    priority=10,
    summary="goes to eu-north/h100-spot: spot is the first preferred tier with 8 free H100",
    candidates=[
        candidate("us-east", "a100", "us-east1", ON_DEMAND, False,
                  "rules[0].require.regions: us-east1 is not in europe-*"),
        candidate("eu-west", "h100", "europe-west4", RESERVED, False, "0 of 8 GPUs free"),
        candidate("eu-north", "h100-spot", "europe-north1", SPOT, True,
                  "spot $1.10/GPU-hour, under the cap of $2.00"),
        candidate("onprem", "", "", 0, False, "dataplane is stale"),
    ],
)  # fmt: skip


def assert_explained(out: str) -> None:
    """The header, then every candidate once: the chosen first, the rest as the server sent."""
    assert header_value(out, "summary") == EXPLANATION.summary
    assert header_value(out, "rule") == "eu-residency"
    assert header_value(out, "priority") == "10"
    assert header_value(out, "policy version") == "3"
    rows = [cells(line) for line in out.splitlines() if "chosen" in line or "excluded" in line]
    assert rows == [
        ["eu-north", "h100-spot", "europe-north1", "spot", "✓ chosen",
         "spot $1.10/GPU-hour, under the cap of $2.00"],
        ["us-east", "a100", "us-east1", "on_demand", "✗ excluded",
         "rules[0].require.regions: us-east1 is not in europe-*"],
        ["eu-west", "h100", "europe-west4", "reserved", "✗ excluded", "0 of 8 GPUs free"],
        ["onprem", "-", "-", "-", "✗ excluded", "dataplane is stale"],
    ]  # fmt: skip


def test_policy_explain_sends_the_job_it_describes(fake_fleet: FakeFleet) -> None:
    fake_fleet.explanation = EXPLANATION
    result = fleet(
        fake_fleet.address, "policy", "explain", "--project", "ml", "--domain", "prod",
        "--name", "train", "--label", "team=vision", "--label", "tier=gold", "--gpus", "8",
        "--gpu-model", "H100", "--min-gpu-memory", "80", "--origin", "europe-west4",
        "--no-spot", "--pin", "eu-north",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = fake_fleet.explain_placements[0].spec
    assert (spec.project, spec.domain, spec.name) == ("ml", "prod", "train")
    assert dict(spec.labels) == {"team": "vision", "tier": "gold"}
    assert spec.resources == types_pb2.Resources(gpus=8, gpu_model="H100", min_gpu_memory_gb=80)
    assert spec.routing == types_pb2.RoutingHints(
        origin_region="europe-west4", allow_spot=False, pin_dataplane="eu-north"
    )
    assert_explained(result.stdout)


def test_policy_explain_defaults_like_submit(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "policy", "explain", "--project", "ml")
    assert result.exit_code == 0, result.output
    spec = fake_fleet.explain_placements[0].spec
    assert spec.domain == "development"
    assert not spec.routing.HasField("allow_spot")  # the policy decides
    assert header_value(result.stdout, "policy version") == "0 (built-in default)"
    assert "no candidate pools" in result.stdout


def test_policy_explain_bad_label_exits_2_before_any_call(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "policy", "explain", "--project", "ml", "--label", "x")
    assert result.exit_code == 2
    assert "--label" in result.stderr and "'x' has no '='" in result.stderr
    assert fake_fleet.explain_placements == []


def test_jobs_explain_shows_every_candidate_chosen_first(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_job(types_pb2.Job(id="job-42"))
    fake_fleet.explanation = EXPLANATION
    result = fleet(fake_fleet.address, "jobs", "explain", "job-42")
    assert result.exit_code == 0, result.output
    assert fake_fleet.explain_jobs[0].job_id == "job-42"
    assert header_value(result.stdout, "job") == "job-42"
    assert_explained(result.stdout)


def test_jobs_explain_as_json(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_job(types_pb2.Job(id="job-42"))
    fake_fleet.explanation = EXPLANATION
    result = fleet(fake_fleet.address, "-o", "json", "jobs", "explain", "job-42")
    assert result.exit_code == 0, result.output
    explanation = json.loads(result.stdout)
    assert explanation["job_id"] == "job-42"
    assert explanation["rule"] == "eu-residency"
    assert explanation["policy_version"] == "3"
    # As the server sent them: JSON is for scripts, the order is the table's business.
    assert [c["dataplane"] for c in explanation["candidates"]] == [
        "us-east", "eu-west", "eu-north", "onprem"
    ]  # fmt: skip
    assert explanation["candidates"][2]["purchase_type"] == "PURCHASE_TYPE_SPOT"


def test_jobs_explain_of_an_unknown_job_exits_1(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "jobs", "explain", "nope")
    assert result.exit_code == 1
    assert "error: job nope not found" in result.stderr
