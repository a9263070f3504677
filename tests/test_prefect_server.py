"""Against a real ``prefect server start``: deploy deployments/prefect.yaml, run a process worker, rebuild a
dataset on the tiny profile, and watch the event chain (train + audit, then evaluate) through the API.

One server, SeaweedFS and worker for the session (tests/deploy_stack.py); processes stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import deploy_stack as ds
import pytest
import s3fs
from typer.testing import CliRunner

from facelift.stack.local import REPO

pytestmark = pytest.mark.timeout(600)


@pytest.fixture()
def api(deploy_stack):
    """The test process talks to the stack's server."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates=ds.settings(deploy_stack.api_url)):
        yield deploy_stack.api_url


def _result(run, api_url: str):
    """The flow run's return value, read back from the object store (results are persisted there)."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates=ds.settings(api_url)):
        return run.state.result()


def test_everything_deployed_with_triggers_schedule_and_queues(deploy_stack, api):
    with ds.client(api) as c:
        names = {f"{c.read_flow(d.flow_id).name}/{d.name}" for d in c.read_deployments()}
        assert {"build-dataset/build", "train-head/train", "audit-diversity/audit", "evaluate/evaluate",
                "sweep-heads/sweep", "enhance-images/enhance", "pipeline/pipeline"} <= names
        build = c.read_deployment_by_name("build-dataset/build")
        assert build.enforce_parameter_schema and build.parameter_openapi_schema["properties"]["count"]
        assert build.work_queue_name == "gpu" and build.global_concurrency_limit.limit == 1
        [schedule] = build.schedules
        assert schedule.active is False and schedule.schedule.cron == "0 3 * * 0"
        assert build.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
        assert c.read_deployment_by_name("audit-diversity/audit").work_queue_name == "cpu"
        gpu = c.read_work_queue_by_name("gpu", work_pool_name="facelift")
        assert gpu.concurrency_limit == 1
        autos = {a.name: a for a in c.read_automations()}
        assert {"curate-new-dataset", "train-on-new-curation", "audit-new-dataset", "evaluate-new-head"} <= set(autos)
        assert autos["train-on-new-curation"].trigger.expect == {"facelift.curation.completed"}
        assert autos["evaluate-new-head"].trigger.expect == {"facelift.head.trained"}
        assert autos["audit-new-dataset"].actions[0].parameters == {
            "dataset_uris": ["{{ event.payload.dataset_uri }}"], "skip_completed": True}
        env = build.job_variables["env"]
        assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "remote-file-system/facelift-results"


def test_invalid_parameters_rejected_by_schema(deploy_stack, api):
    from facelift.cli.main import app
    from facelift.cli.ops import DeploymentRunError, run_deployment_now

    before = len(ds.runs_of(api, "build-dataset/build"))
    with pytest.raises(DeploymentRunError, match=r"rejected the parameters.*count"):
        run_deployment_now("build-dataset/build", {"profile": "tiny", "count": "many"})
    with pytest.raises(DeploymentRunError, match=r"not found"):
        run_deployment_now("build-dataset/nope", {})
    res = CliRunner().invoke(app, ["rebuild", "--mode", "sideways"])
    assert res.exit_code == 2 and "mode" in res.output and "sideways" in res.output
    # the stock CLI is rejected the same way
    cli = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "build-dataset/build", "-p",
                          "count=-3x"], env=deploy_stack.env, capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and "count" in (cli.stdout + cli.stderr)
    assert len(ds.runs_of(api, "build-dataset/build")) == before  # nothing was created


def _pause_automations(api: str, resume: bool = False) -> None:
    with ds.client(api) as c:
        for auto in c.read_automations():
            (c.resume_automation if resume else c.pause_automation)(auto.id)


def test_rebuild_triggers_curate_train_audit_then_evaluate(deploy_stack, api):
    """build -> curate + audit; curate -> train on the curation's kept pairs; train -> evaluate."""
    build = ds.run_build(deploy_stack, "chain", profile="tiny", count=ds.COUNT, root=deploy_stack.root)
    assert build.state_name == "Completed", deploy_stack.worker_log()
    out = _result(build, api)
    uri = out["dataset_uri"]
    assert uri.startswith(f"{deploy_stack.root}/datasets/") and out["pairs"] == ds.COUNT

    def on_dataset(r):
        return r.parameters.get("dataset_uri") == uri or r.parameters.get("dataset_uris") == [uri]

    [curate] = ds.wait_for_runs(api, "curate-pairs/curate", on_dataset, 60, deploy_stack)
    [audit] = ds.wait_for_runs(api, "audit-diversity/audit", on_dataset, 60, deploy_stack)
    curate = ds.wait_run(api, curate.id, 300, deploy_stack)
    assert curate.state_name == "Completed", deploy_stack.worker_log()
    curation = _result(curate, api)
    assert curation["pairs"] == ds.COUNT and "tiny profile" in curation["report_only_why"]
    [train] = ds.wait_for_runs(api, "train-head/train", on_dataset, 60, deploy_stack)
    assert train.parameters["flavor"] == "debug"  # deployment defaults merged under the trigger's parameters
    assert train.parameters["curation"] == curation["curation_id"]
    train = ds.wait_run(api, train.id, 300, deploy_stack)
    assert train.state_name == "Completed", deploy_stack.worker_log()
    run_uri = _result(train, api)["run_uri"]
    run = json.loads(s3fs.S3FileSystem(client_kwargs={"endpoint_url": deploy_stack.weed.endpoint},
                                       skip_instance_cache=True).cat_file(f"{run_uri.removeprefix('s3://')}/run.json"))
    assert run["config"]["curation"] == curation["curation_id"]  # the run records what it trained on
    [evaluate] = ds.wait_for_runs(api, "evaluate/evaluate", on_dataset, 60, deploy_stack)
    assert evaluate.parameters["heads"] == [run_uri]
    audit = ds.wait_run(api, audit.id, 300, deploy_stack)
    assert audit.state_name == "Completed", deploy_stack.worker_log()
    evaluate = ds.wait_run(api, evaluate.id, 300, deploy_stack)
    assert evaluate.state_name == "Completed", deploy_stack.worker_log()
    table = _result(evaluate, api)["table"]
    assert [row["row"] for row in table][:2] == ["schnell", "dev"] and len(table) == 3

    # the build run published its artifacts; results live in the object store
    with ds.client(api) as c:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[build.id])))
    assert {"progress", "table"} <= {a.type for a in arts}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": deploy_stack.weed.endpoint}, skip_instance_cache=True,
                           use_listings_cache=False)
    stored = fs.ls(f"{deploy_stack.root}/prefect-results".removeprefix("s3://"))
    assert stored
    for key in stored:  # JSON, nothing a flow run would unpickle (deployments/prefect.yaml): a pickle is no JSON
        record = json.loads(fs.cat_file(key))  # a result record (metadata + result) or a bare JSON value
        if isinstance(record, dict) and "metadata" in record:
            assert record["metadata"]["serializer"]["type"] == "json", (key, record["metadata"])

    # events mean change: an identical rebuild commits nothing, emits nothing, and chains nothing
    again = ds.run_build(deploy_stack, "chain-again", profile="tiny", count=ds.COUNT, root=deploy_stack.root)
    assert again.state_name == "Completed", deploy_stack.worker_log()
    same = _result(again, api)
    assert same["dataset_uri"] == uri and same["changed"] is False and same["generated_pairs"] == 0
    time.sleep(8)  # triggers fire within ~0.1 s of an event
    for dep in ("curate-pairs/curate", "train-head/train", "audit-diversity/audit", "evaluate/evaluate"):
        assert len([r for r in ds.runs_of(api, dep) if on_dataset(r)]) == 1, dep


def test_a_sim_build_starts_no_train_or_audit_run(deploy_stack, api):
    """A sim build (placeholder images) announces itself as simulated; the train and audit triggers skip it."""
    build = ds.run_build(deploy_stack, "sim", profile="sim", count=6, mode="baseline", root=deploy_stack.root,
                         overrides={"plan.shard_size": 3, "generation.height": 16, "generation.width": 16,
                                    "generation.sim_seconds_per_pair": 0.0})
    assert build.state_name == "Completed", deploy_stack.worker_log()
    uri = _result(build, api)["dataset_uri"]
    deadline = time.monotonic() + 60  # the server stores events in batches
    while not (built := [e for e in ds.events(api, "facelift.dataset.built") if e.payload.get("dataset_uri") == uri]):
        assert time.monotonic() < deadline, "no facelift.dataset.built event for the sim build"
        time.sleep(1)
    assert built and built[0].resource["facelift.simulated"] == "true" and built[0].payload["simulated"] is True
    time.sleep(8)  # triggers fire within ~0.1 s of an event
    for dep in ("curate-pairs/curate", "train-head/train", "audit-diversity/audit"):
        assert not [r for r in ds.runs_of(api, dep)
                    if uri in (r.parameters.get("dataset_uri"), *(r.parameters.get("dataset_uris") or []))], dep


def test_same_parameters_resume_and_changed_parameters_make_a_new_dataset(deploy_stack, api):
    from prefect.settings import temporary_settings

    _pause_automations(api)  # this test needs no chain: its builds must not start train/audit/evaluate runs
    try:
        first = _result(ds.run_build(deploy_stack, "chain", profile="tiny", count=ds.COUNT, root=deploy_stack.root),
                        api)
        # object store down when the rebuild starts: the run fails visibly
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": deploy_stack.weed.endpoint}, skip_instance_cache=True,
                           use_listings_cache=False)
        ds_key = first["dataset_uri"].removeprefix("s3://")
        fs.rm(f"{ds_key}/shards/00001.parquet")
        deploy_stack.weed.stop()
        with temporary_settings(updates=ds.settings(api)):
            from facelift.cli.ops import build_parameters, run_deployment_now

            params = build_parameters(profile="tiny", count=ds.COUNT, root=deploy_stack.root)
            down = run_deployment_now("build-dataset/build", params)
        down = ds.wait_run(api, down.id, 180, deploy_stack)
        assert down.state_name in {"Failed", "Crashed"}, down.state_name
        assert "127.0.0.1" in (down.state.message or "") or "connect" in (down.state.message or "").lower()
        # back up (same data dir and port): the same parameters resume the same dataset
        deploy_stack.weed.start()
        again = ds.run_build(deploy_stack, "resume", profile="tiny", count=ds.COUNT, root=deploy_stack.root)
        assert again.state_name == "Completed", deploy_stack.worker_log()
        resumed = _result(again, api)
        assert resumed["dataset_id"] == first["dataset_id"]
        assert resumed["generated_shards"] == 1 and resumed["pairs"] == ds.COUNT
        # changed parameters make a new dataset version (through `facelift rebuild --wait`)
        from facelift.cli.main import app

        res = CliRunner().invoke(app, ["rebuild", "--count", "8", "--root", deploy_stack.root, "--wait",
                                       "--timeout", "240"])
        assert res.exit_code == 0, res.output + deploy_stack.worker_log()
        assert "Completed" in res.output and '"count": 8' in res.output
        [cli_run] = [r for r in ds.runs_of(api, "build-dataset/build") if "rebuild" in r.tags]
        changed = _result(cli_run, api)
        assert changed["dataset_id"] != first["dataset_id"] and changed["pairs"] == 8
    finally:
        _pause_automations(api, resume=True)



def test_pipeline_runs_stages_as_subflows_without_starting_the_chain(deploy_stack, api):
    """build (resumed: nothing to generate) -> curate -> train -> evaluate as subflows of one run; no trigger
    fires."""
    import time

    from facelift.cli.ops import run_deployment_now

    _pause_automations(api)  # the dataset the pipeline resumes, built without starting a chain of its own
    try:
        uri = _result(ds.run_build(deploy_stack, "chain", profile="tiny", count=ds.COUNT, root=deploy_stack.root),
                      api)["dataset_uri"]
    finally:
        _pause_automations(api, resume=True)
    time.sleep(5)  # a trigger that still saw that build's event has fired by now, and counts as "before"
    chained = ("curate-pairs/curate", "train-head/train", "audit-diversity/audit")
    before = {r.id for dep in chained for r in ds.runs_of(api, dep)}
    run = run_deployment_now("pipeline/pipeline", {
        "profile": "tiny", "count": ds.COUNT, "root": deploy_stack.root, "heads": ["cyclegan"], "audit": False,
        "train": {k: v for k, v in deploy_stack.params["train"].items() if k != "head"},
        "evaluate_options": deploy_stack.params["evaluate"]})
    run = ds.wait_run(api, run.id, 300, deploy_stack)
    assert run.state_name == "Completed", deploy_stack.worker_log()
    out = _result(run, api)
    assert out["dataset_uri"] == uri
    assert len(out["train_runs"]) == 1 and out["audit_run"] is None
    assert [row["row"] for row in out["table"]][:2] == ["schnell", "dev"]
    with ds.client(api) as c:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        subs = c.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[run.id])))
    assert len(subs) == 4 and all(r.state_name == "Completed" for r in subs)  # build, curate, train, evaluate
    assert out["curation_id"]
    time.sleep(5)  # triggers fire within ~0.1 s of an event
    # subflow events carry no deployment: the chain is not started a second time
    assert not [r.name for d in chained for r in ds.runs_of(api, d) if r.id not in before]
    assert not [r for r in ds.runs_of(api, "evaluate/evaluate") if r.parameters.get("heads") == out["train_runs"]]


def test_a_flow_run_killed_with_its_machine_shows_crashed_within_two_minutes(deploy_stack, api, tmp_path):
    """A build run whose process dies with SIGKILL, with no worker left to report it (a lost machine): its
    heartbeats stop and the zombie automation (deployments/automations.yaml) marks it Crashed."""
    from prefect.states import Pending

    from facelift.cli.ops import build_parameters

    params = build_parameters(profile="tiny", count=8, root=deploy_stack.root, dataset_id="zombie",
                              overrides={"plan.shard_size": 2, "ray.chaos.shard_delay_s": 60})
    with ds.client(api) as c:
        dep = c.read_deployment_by_name("build-dataset/build")
        run = c.create_flow_run_from_deployment(dep.id, parameters=params, state=Pending())  # no worker takes it
    env = {**deploy_stack.env, "PREFECT__FLOW_RUN_ID": str(run.id)}
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect.flow_engine", "flows/build_dataset.py:build_dataset"],
                                env=env, cwd=Path(__file__).parents[1], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not ds.events(api, "prefect.flow-run.heartbeat", f"prefect.flow-run.{run.id}"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the run's process and everything it started
        proc.wait(timeout=60)
    killed = time.monotonic()
    with ds.client(api) as c:
        assert c.read_flow_run(run.id).state_name == "Running"  # nobody told the server
        while (state := c.read_flow_run(run.id).state).name != "Crashed" and time.monotonic() - killed < 150:
            time.sleep(2)
    assert state.name == "Crashed" and "No heartbeat" in (state.message or ""), state
    assert time.monotonic() - killed < 120
