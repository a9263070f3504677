"""Run the facelift stack on loopback: Prefect server + UI, SeaweedFS S3, a Ray head, a process worker.

Used by ``make stack`` / ``make stack-down`` (``python -m facelift.cli.localstack up|down|status``) and by the
tests that need a real Prefect server. Every process is started in its own session and stopped by the pid
recorded when it was started (pid files under ``.stack/``: pid, start time and command line), never by name.
``up`` is idempotent: services whose recorded process is alive, healthy and started with the settings wanted now
(``state.json``) are kept, the rest are (re)started; then, with auth on, every HTTP service must refuse an
anonymous request before ``up`` reports the stack up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelift.stack import postgres
from facelift.stack.auth import StackSecrets, auth_enabled, server_security_env
from facelift.stack.procs import ProcRecord, http_ok, pid_alive, spawn, stop_group, stop_worker
from facelift.stack.state import StackState, anonymous_answers, digest, flag_value, open_services
from facelift.testing import SeaweedS3, free_port, stop_pid

log = logging.getLogger(__name__)


def find_repo() -> Path:
    """The checkout holding deployments/ and flows/: $DEPLOY_REPO_DIR, else this file's checkout, else cwd."""
    for cand in (os.environ.get("DEPLOY_REPO_DIR"), Path(__file__).resolve().parents[2], Path.cwd()):
        if cand and (Path(cand) / "deployments" / "prefect.yaml").is_file():
            return Path(cand).resolve()
    return Path.cwd()


REPO = find_repo()
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
AUTOMATIONS_FILE = REPO / "deployments" / "automations.yaml"
LOCAL_PARAMETERS = REPO / "infra" / "local" / "parameters.yaml"
POOL = "facelift"
QUEUES = {"gpu": 1, "cpu": None}  # queue -> concurrency limit (None: unlimited)
RESULTS_BLOCK = "facelift-results"
# what a shell needs to use the stack (`env` command, .stack/env.json)
CLIENT_ENV = ("PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS", "FACELIFT_STORAGE__ROOT")
LOCAL_S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "facelift-local", "AWS_SECRET_ACCESS_KEY": "facelift-local-secret",
                        "AWS_DEFAULT_REGION": "us-east-1"}
BASE_ENV = {  # no RAY_AUTH_MODE here: the stack sets token mode (or, with STACK_AUTH=off, disabled) itself
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # flow runs send heartbeats: deployments/automations.yaml
}


class StackError(RuntimeError):
    """A stack service failed to start, or a Prefect CLI call failed."""


@dataclass
class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with SQLite under ``home`` (PREFECT_HOME); with ``auth_string``
    every API call but the health probe needs it (basic auth). CORS is limited to the UI's origin, CSRF is on."""

    home: Path
    port: int = 0
    pid: int | None = None
    auth_string: str | None = field(default=None, repr=False)
    database_url: str | None = None  # None: SQLite under home; else e.g. PostgreSQL (facelift.stack.postgres)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for clients, workers and CLI calls that talk to this server."""
        env = {**(os.environ if base is None else base), **BASE_ENV}
        env.update(PREFECT_HOME=str(self.home), PREFECT_API_URL=self.api_url,
                   PREFECT_UI_API_URL=self.api_url, PREFECT_UI_URL=self.ui_url)
        for key in ("PREFECT_PROFILES_PATH", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
            env.pop(key, None)
        env.update(server_security_env(self.ui_url, self.auth_string))
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the server's alone: it holds the password
        return env

    def settings(self) -> dict[Any, Any]:
        """``temporary_settings(updates=...)`` for an in-process client of this server."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        return {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string}

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url, auth_string=self.auth_string)

    def healthy(self) -> bool:
        return bool(self.port) and http_ok(f"{self.api_url}/health")

    def start(self, timeout_s: float = 300.0) -> PrefectServer:  # a first start migrates the database
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        env = self.env()
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        proc = spawn(cmd, env, self.home / "server.log", REPO)
        self.pid = proc.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"prefect server exited with {proc.returncode}; see {self.home / 'server.log'}")
            if self.healthy():
                log.info("prefect server up on %s (pid %d)", self.ui_url, self.pid)
                return self
            time.sleep(0.5)
        self.stop()
        raise StackError(f"prefect server not healthy on {self.api_url} after {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.pid and pid_alive(self.pid):
            stop_pid(self.pid, timeout_s=15)
        self.pid = None


def prefect_cli(args: list[str], env: dict[str, str], check: bool = True, timeout_s: float = 300.0,
                cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``prefect <args>`` against the server in ``env``; raise with its output on failure."""
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s)
    if check and proc.returncode != 0:
        raise StackError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def setup_pool(api_url: str, pool: str = POOL, queues: dict[str, int | None] = QUEUES,
               auth_string: str | None = None) -> None:
    """Create the process work pool and its queues with their concurrency limits (idempotent).

    CLI equivalent: ``prefect work-pool create facelift --type process`` and
    ``prefect work-queue create gpu --pool facelift --limit 1``.
    """
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate, WorkQueueUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with SyncPrefectClient(api=api_url, auth_string=auth_string) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            from prefect.workers.process import ProcessWorker

            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
        for queue, limit in queues.items():
            try:
                wq = client.create_work_queue(queue, work_pool_name=pool, concurrency_limit=limit)
            except ObjectAlreadyExists:
                wq = client.read_work_queue_by_name(queue, work_pool_name=pool)
            if wq.concurrency_limit != limit:
                client.update_work_queue(wq.id, **WorkQueueUpdate(concurrency_limit=limit).model_dump(
                    exclude_unset=True))


def setup_results_block(api_url: str, basepath: str, endpoint_url: str | None, auth_string: str | None = None
                        ) -> None:
    """The ``remote-file-system/facelift-results`` block the deployments persist results to."""
    from prefect.filesystems import RemoteFileSystem
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
    with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth_string}):
        RemoteFileSystem(basepath=basepath, settings=settings).save(RESULTS_BLOCK, overwrite=True)


def deploy_all(env: dict[str, str], prefect_file: Path = PREFECT_FILE, repo: Path = REPO) -> str:
    """``prefect --no-prompt deploy --all`` from the repository root (workers run code from ``repo``), then the
    automations of ``deployments/automations.yaml``."""
    env = {**env, "DEPLOY_REPO_DIR": str(repo)}
    out = prefect_cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], env, cwd=repo).stdout
    setup_automations(env["PREFECT_API_URL"], env.get("PREFECT_API_AUTH_STRING"))
    return out


def setup_automations(api_url: str, auth_string: str | None = None, path: Path = AUTOMATIONS_FILE) -> list[str]:
    """Create or update (by name) every automation in ``path``; returns their names."""
    import yaml
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import AutomationCore

    specs = [AutomationCore.model_validate(a) for a in yaml.safe_load(path.read_text())["automations"]]
    with SyncPrefectClient(api=api_url, auth_string=auth_string) as client:
        for spec in specs:
            existing = client.read_automations_by_name(spec.name)
            if existing:
                client.update_automation(existing[0].id, spec)
            else:
                client.create_automation(spec)
    return [s.name for s in specs]


def overlay_prefect_file(dst: Path, params: dict[str, dict[str, object]], src: Path = PREFECT_FILE) -> Path:
    """Write ``src`` with ``params[deployment name]`` laid over each deployment's ``parameters``."""
    import yaml

    doc = yaml.safe_load(src.read_text())
    for dep in doc["deployments"]:
        if dep["name"] in params:
            dep["parameters"] = {**(dep.get("parameters") or {}), **params[dep["name"]]}
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def build_offline_weights(cache: Path, deepface_home: Path, env: dict[str, str]) -> dict[str, str]:
    """Random-weight FID Inception + tiny CLIP (in ``cache``) and DeepFace files (in ``deepface_home``), made
    once, in two parallel subprocesses; returns evaluate's ``inception_weights`` and ``clip_model``."""
    env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(arg)], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for code, arg in (
        ("import sys, json; from models.tiny_metrics import ensure_random_fid_weights as f, ensure_tiny_clip as c;"
         " print(json.dumps([str(f(sys.argv[1])), str(c(sys.argv[1]))]))", cache),
        ("import sys; from models.deepface_weights import build_random_weights as b; b(sys.argv[1])",
         deepface_home))]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise StackError(f"building offline weights failed: {err[-2000:]}")
        outs.append(out)
    fid, clip = json.loads(outs[0].strip().splitlines()[-1])
    return {"inception_weights": fid, "clip_model": clip}


def start_worker(env: dict[str, str], log_path: Path, pool: str = POOL, name: str = "facelift-local",
                 query_seconds: int = 1) -> subprocess.Popen:
    """A process worker for ``pool`` (all queues); flow runs inherit ``env``."""
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds)}
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
    return spawn(cmd, env, log_path, REPO)


def make_private(root: Path) -> None:
    """Take group and other access off ``root`` and everything under it (symlinks are left alone)."""
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                path.chmod(stat.S_IMODE(mode) & 0o700)
        except FileNotFoundError:  # a service removed it meanwhile
            continue


SERVICES = ("postgres", "prefect", "seaweed", "ray", "worker")  # in start order
# what the stack's services take from the operator's environment: the platform, caches and config, no credentials
PASSED_ENV = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "HF_HOME",
              "HF_HUB_CACHE", "HF_HUB_OFFLINE", "DEEPFACE_HOME", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES",
              "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}
PASSED_PREFIXES = ("LC_", "FACELIFT_", "NVIDIA_")  # FACELIFT_*: configuration keys (never secrets)


def passed_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in PASSED_ENV or k.startswith(PASSED_PREFIXES)}


# -- the stack (pid files under .stack/) ----------------------------------------------------------------------
def _port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit():
        raise StackError(f"{name}={value!r} is not a port number")
    return int(value)


@dataclass
class Stack:
    """State of a loopback stack rooted at ``dir`` (default ``<repo>/.stack``); credentials in ``dir/secrets``
    unless ``auth`` is off (``STACK_AUTH=off``)."""

    dir: Path = field(default_factory=lambda: REPO / ".stack")
    prefect_port: int = 4200
    s3_port: int = 8333
    ray_port: int = 6380
    bucket: str = "facelift"
    auth: bool = True

    @classmethod
    def from_env(cls) -> Stack:
        """``STACK_DIR``, ``STACK_PREFECT_PORT``, ``STACK_S3_PORT``, ``STACK_RAY_PORT``, ``STACK_AUTH`` (not
        ``FACELIFT_*``: those are configuration keys)."""
        return cls(Path(os.environ.get("STACK_DIR", REPO / ".stack")).resolve(),
                   _port("STACK_PREFECT_PORT", 4200), _port("STACK_S3_PORT", 8333), _port("STACK_RAY_PORT", 6380),
                   auth=auth_enabled())

    @property
    def secrets(self) -> StackSecrets:
        return StackSecrets(self.dir / "secrets")

    def _pid(self, name: str) -> int | None:
        """The pid of this stack's ``name`` service, only while that very process runs: a pid file whose pid now
        names another process (a reboot, pid reuse) or a bare pid from an older stack counts as not running."""
        record = ProcRecord.read(self.dir / f"{name}.pid")
        return record.pid if record and record.matches() else None

    def _write_pid(self, name: str, pid: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record = ProcRecord.of(pid)
        if record is None:
            raise StackError(f"{name} (pid {pid}) exited as it started; see its log in {self.dir}")
        record.write(self.dir / f"{name}.pid")

    @property
    def server(self) -> PrefectServer:
        db = self.database
        return PrefectServer(self.dir / "prefect", self.prefect_port, self._pid("prefect"),
                             self.secrets.prefect_auth() if self.auth else None, db.url if db else None)

    @property
    def database(self) -> postgres.Postgres | None:
        """PostgreSQL for the Prefect server when ``STACK_DATABASE=postgres``; None: SQLite (the default)."""
        return postgres.for_stack(self.dir, self._pid("postgres"), self.secrets.postgres_password)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def ray_tmp(self) -> Path | None:
        """The private (0700, unpredictable) folder that holds Ray's session folder, made by ``mkdtemp`` when the
        head starts and named in ``<stack>/ray-tmp``; short and under /tmp (Ray's AF_UNIX socket paths must stay
        under 108 bytes). Ray makes its own folder inside world-writable; this one keeps others out of it."""
        try:
            return Path((self.dir / "ray-tmp").read_text().strip())
        except FileNotFoundError:
            return None

    def env(self) -> dict[str, str]:
        """The environment of the stack's services and clients (worker, flow runs): holds the stack's secrets,
        and of the operator's own environment only what :data:`PASSED_ENV` lets through (never, e.g., their
        HF_TOKEN or cloud keys)."""
        env = self.server.env(passed_env(os.environ))
        if self.auth:
            env.update(self.secrets.client_env())
        else:  # explicit STACK_AUTH=off: open services on loopback
            env["RAY_AUTH_MODE"] = "disabled"
            for key, value in LOCAL_S3_CREDENTIALS.items():  # SeaweedFS without auth; s3fs needs some keys
                env.setdefault(key, value)
        env.update(AWS_ENDPOINT_URL_S3=self.s3_endpoint, RAY_ADDRESS=f"127.0.0.1:{self.ray_port}",
                   FACELIFT_CACHE=env.get("FACELIFT_CACHE", str(self.dir / "cache")),
                   FACELIFT_STORAGE__ROOT=f"s3://{self.bucket}",
                   DEEPFACE_HOME=env.get("DEEPFACE_HOME", str(self.dir / "deepface")))
        if self.ray_tmp:
            env["RAY_TMPDIR"] = str(self.ray_tmp)  # a driver's own session files: <RAY_TMPDIR>/ray
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        return env

    def shell_exports(self) -> list[str]:
        """``facelift stack env``: addresses, and the credentials read from their files (never printed)."""
        env = self.env()
        lines = [f"export {key}={env[key]}" for key in CLIENT_ENV]
        if self.auth:
            return lines + self.secrets.shell_exports()
        return lines + ["export RAY_AUTH_MODE=disabled"] + [f"export {k}={v}" for k, v in LOCAL_S3_CREDENTIALS.items()]

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"pid": pid, "alive": pid is not None} for name in SERVICES for pid in [self._pid(name)]}

    def up(self) -> str:
        """Start whatever is not running, deploy everything, return the UI URL. Everything the stack and its
        services write is private to this user (umask 077; an older stack's files lose group/other access)."""
        os.umask(0o077)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_private(self.dir)
        state = StackState(self.dir / "state.json")
        for name in reversed(SERVICES):  # dependants first
            if self._pid(name) and not state.matches(name, self._settings(name)):
                log.warning("%s runs with other settings (auth, ports, or an older facelift): restarting it", name)
                self._stop(name)
        if (db := self.database) and not (pid_alive(db.pid) and db.ready()):
            self._write_pid("postgres", db.start().pid)
        server = self.server
        if not (pid_alive(server.pid) and server.healthy()):
            server.start()
            self._write_pid("prefect", server.pid)
        env = self.env()
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):  # make_bucket's client
            os.environ[key] = env[key]
        weed = SeaweedS3(self.dir / "seaweed", s3_port=self.s3_port,
                         s3_config=self.secrets.s3_config() if self.auth else None,
                         security=self.secrets.seaweed_security() if self.auth else None)
        if self._pid("seaweed") is None:
            weed.start()
            self._write_pid("seaweed", weed.proc.pid)
        weed.make_bucket(self.bucket)
        if self._pid("ray") is None:
            self._start_ray(env)
        setup_pool(server.api_url, auth_string=server.auth_string)
        setup_results_block(server.api_url, f"s3://{self.bucket}/prefect-results", self.s3_endpoint,
                            auth_string=server.auth_string)
        import yaml

        params = yaml.safe_load(LOCAL_PARAMETERS.read_text())
        params["evaluate"].update(build_offline_weights(Path(env["FACELIFT_CACHE"]), Path(env["DEEPFACE_HOME"]),
                                                        env))
        deploy_all(env, overlay_prefect_file(self.dir / "prefect.yaml", params))
        if self._pid("worker") is None:
            self._write_pid("worker", start_worker(env, self.dir / "worker.log").pid)
        for name in SERVICES:
            state.record(name, self._settings(name) if self._pid(name) else None)
        (self.dir / "env.json").write_text(json.dumps({k: env[k] for k in CLIENT_ENV}, indent=1))  # no secrets
        if self.auth:
            self._refuse_open_services(server.api_url)
        return server.ui_url

    def _settings(self, name: str) -> str:
        """Digest of what service ``name`` is started with (``state.json``)."""
        ports = {"prefect": self.prefect_port, "seaweed": self.s3_port, "ray": self.ray_port,
                 "worker": self.prefect_port, "postgres": None}[name]
        db = self.database
        return digest({"service": name, "auth": self.auth, "port": ports, "database": db.url if db else None})

    def _refuse_open_services(self, api_url: str) -> None:
        weed = ProcRecord.read(self.dir / "seaweed.pid")
        answers = anonymous_answers(api_url, self.s3_endpoint, self.bucket,
                                    flag_value(weed.cmdline, "filer.port") if weed else None)
        if problems := open_services(answers):
            raise StackError("a stack service accepts anonymous requests (" + "; ".join(problems) + "): not "
                             "reporting up; `make stack-down`, then `make stack`")

    def _start_ray(self, env: dict[str, str]) -> None:
        import tempfile

        if self.ray_tmp:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
        private = tempfile.mkdtemp(prefix="facelift-ray-", dir="/tmp")  # 0700, a name nobody could take first
        (self.dir / "ray-tmp").write_text(private + "\n")
        env = {**env, "RAY_TMPDIR": private}
        ray = Path(sys.executable).parent / "ray"
        cmd = [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.ray_port}",
               "--include-dashboard=false", f"--temp-dir={private}/ray", "--disable-usage-stats"]
        proc = spawn(cmd, env, self.dir / "ray.log", REPO)
        self._write_pid("ray", proc.pid)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"ray start exited with {proc.returncode}; see {self.dir / 'ray.log'}")
            if b"Ray runtime started" in (self.dir / "ray.log").read_bytes():
                return
            time.sleep(0.5)
        raise StackError(f"Ray head not up after 90s; see {self.dir / 'ray.log'}")

    def _stop(self, name: str) -> int | None:
        """Stop service ``name`` if its recorded process runs; its pid, or None."""
        pid = self._pid(name)
        if pid and pid_alive(pid):
            if name == "worker":
                stop_worker(pid)
            else:  # `ray start --block` tears its node down on SIGTERM; weed and the server too
                stop_pid(pid, timeout_s=20)
                stop_group(pid)
        else:
            pid = None
        (self.dir / f"{name}.pid").unlink(missing_ok=True)
        if name == "ray" and self.ray_tmp:  # Ray's session files (logs stay in .stack/ray.log)
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            (self.dir / "ray-tmp").unlink(missing_ok=True)
        return pid

    def down(self) -> list[str]:
        """Stop exactly the processes this stack started (by pid file); returns what was stopped."""
        stopped = [f"{name} ({pid})" for name in reversed(SERVICES) if (pid := self._stop(name))]
        (self.dir / "state.json").unlink(missing_ok=True)
        return stopped
