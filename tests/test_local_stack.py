"""The documented entry points, run from the shell as a user would: ``make stack``, ``source <(facelift stack
env)``, ``facelift rebuild --wait`` and ``make stack-down`` (docs/deploy.md). The stack is secured by default:
the Prefect API answers 401 without its auth string, a Ray client without the token is refused, the S3 gateway
refuses unknown keys, and the secrets live in ``<stack>/secrets`` with mode 0600, never printed.

Ports and the stack folder come from ``STACK_*`` variables, so the test runs beside a user's own stack.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from facelift.stack.local import REPO
from facelift.testing import free_port

pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]

PROBES = r'''
import json, os, subprocess, sys, urllib.error, urllib.request
out = {}
api = os.environ["PREFECT_API_URL"]
def status(req):
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
import base64
def basic(text):
    return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}
good = basic(os.environ["PREFECT_API_AUTH_STRING"])
out["health"] = status(f"{api}/health")
out["no_auth"] = status(f"{api}/admin/settings")
out["anon_post"] = status(urllib.request.Request(f"{api}/flows/filter", data=b"{}", method="POST",
                                                 headers={"Content-Type": "application/json"}))
out["bad_auth"] = status(urllib.request.Request(f"{api}/admin/settings", headers=basic("admin:wrong")))
out["good_auth"] = status(urllib.request.Request(f"{api}/admin/version", headers=good))
# a write without the CSRF token is refused even with the credentials (CSRF protection is on)
out["post_no_csrf"] = status(urllib.request.Request(f"{api}/deployments/filter", data=b"{}", method="POST",
                                                    headers={"Content-Type": "application/json", **good}))
cors = urllib.request.Request(f"{api}/deployments/filter", method="OPTIONS", headers={
    "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
try:
    with urllib.request.urlopen(cors, timeout=10) as r:
        out["cors_evil"] = r.headers.get("access-control-allow-origin")
except urllib.error.HTTPError as e:
    out["cors_evil"] = e.headers.get("access-control-allow-origin")
ray_code = ("import ray, os; ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False); "
            "print('CPUS', ray.cluster_resources().get('CPU'))")
def ray_try(env):
    p = subprocess.run([sys.executable, "-c", ray_code], env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, (p.stdout + p.stderr)[-600:]
with_token = ray_try(dict(os.environ))
no_token = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
no_token["HOME"] = os.environ["PROBE_HOME"]  # no ~/.ray/auth_token either
wrong = dict(no_token, RAY_AUTH_TOKEN="0" * 64)
unaware = {k: v for k, v in no_token.items() if k != "RAY_AUTH_MODE"}  # a client that knows nothing of auth
out["ray_with_token"], out["ray_no_token"], out["ray_wrong_token"] = with_token, ray_try(no_token), ray_try(wrong)
out["ray_unaware"] = ray_try(unaware)
import s3fs
ep = os.environ["AWS_ENDPOINT_URL_S3"]
fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": ep})
fs.pipe_file("facelift/probe", b"ok")
out["s3_ok"] = fs.cat_file("facelift/probe") == b"ok"
try:
    s3fs.S3FileSystem(key="facelift-local", secret="facelift-local-secret", client_kwargs={"endpoint_url": ep},
                      skip_instance_cache=True).ls("facelift")
    out["s3_wrong_keys"] = "accepted"
except Exception as e:
    out["s3_wrong_keys"] = type(e).__name__ + ": " + str(e)[:200]
print("PROBES " + json.dumps(out))
'''


def _sh(script: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _pids(stack_dir: Path) -> dict[str, int]:
    return {p.stem: int(json.loads(p.read_text())["pid"]) for p in stack_dir.glob("*.pid")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_make_stack_env_rebuild_and_stack_down_from_the_shell(tmp_path, cache_dir):
    import tempfile

    stack_dir = Path(tempfile.mkdtemp(prefix="fl-stack-", dir="/tmp"))  # not under pytest's shared basetemp
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "RAY_"))}
    env.update(STACK_DIR=str(stack_dir), STACK_PREFECT_PORT=str(free_port()), STACK_S3_PORT=str(free_port()),
               STACK_RAY_PORT=str(free_port()), FACELIFT_CACHE=str(cache_dir), PROBE_HOME=str(tmp_path),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="3")
    venv = Path(sys.executable).parent
    try:
        # first started open (STACK_AUTH=off); a plain `make stack` must not keep those services
        off = _sh(f"make stack VENV={venv.parent}", {**env, "STACK_AUTH": "off"}, timeout=1200)
        assert off.returncode == 0, off.stdout[-3000:] + off.stderr[-3000:]
        open_pids = _pids(stack_dir)
        up = _sh(f"make stack VENV={venv.parent}", env, timeout=1200)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "Prefect UI: http://127.0.0.1:" in up.stdout and "UI login" in up.stdout
        assert not set(open_pids.values()) & set(_pids(stack_dir).values()), "an open service was kept"
        secrets = stack_dir / "secrets"
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        files = {p.name: p for p in secrets.iterdir() if p.is_file() and p.name != "s3.json"}
        assert set(files) == {"prefect-auth", "ray-token", "s3-access-key", "s3-secret-key", "seaweed-volume-write",
                              "seaweed-volume-read", "seaweed-filer-write", "seaweed-filer-read"}
        assert all(stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600) for p in secrets.rglob("*"))
        values = [p.read_text().strip() for p in files.values()]
        # SeaweedFS's own HTTP ports, as a neighbour finds them in /proc/<pid>/cmdline, refuse anonymous reads
        weed = Path(f"/proc/{_pids(stack_dir)['seaweed']}/cmdline").read_bytes().decode().split("\0")
        ports = {a.split("=")[0]: a.split("=")[1] for a in weed if a.startswith(("-filer.port=", "-volume.port="))}
        assert _anonymous(f"http://127.0.0.1:{ports['-filer.port']}/buckets/facelift/") == 401
        assert _anonymous(f"http://127.0.0.1:{ports['-volume.port']}/1,01") == 401

        printed = _sh(f"{venv}/facelift stack env", env)
        assert printed.returncode == 0, printed.stderr
        assert "PREFECT_API_AUTH_STRING=" in printed.stdout and "RAY_AUTH_MODE=token" in printed.stdout
        assert not [v for v in values if v in printed.stdout]  # secrets are read from files, never printed
        assert not [v for v in values if v in (stack_dir / "env.json").read_text()]

        probes = _sh(f"source <({venv}/facelift stack env) && {sys.executable} -c {_quote(PROBES)}", env)
        line = [ln for ln in probes.stdout.splitlines() if ln.startswith("PROBES ")]
        assert line, probes.stdout[-2000:] + probes.stderr[-3000:]
        out = json.loads(line[0].removeprefix("PROBES "))
        assert out["health"] == 200 and out["no_auth"] == 401 and out["bad_auth"] == 401, out
        assert out["anon_post"] in (401, 403), out  # the services started open before were not kept
        assert out["good_auth"] == 200 and out["post_no_csrf"] == 403, out
        assert out["cors_evil"] in (None, ""), out
        assert out["ray_with_token"][0] == 0 and "CPUS" in out["ray_with_token"][1], out["ray_with_token"]
        for refused in ("ray_no_token", "ray_wrong_token", "ray_unaware"):
            rc, text = out[refused]
            assert rc != 0 and ("uthenticat" in text or "token" in text.lower() or "Failed to connect" in text), \
                (refused, text)  # the same address with the token connects: the refusal is the auth
        assert out["s3_ok"] and out["s3_wrong_keys"] != "accepted", out

        rebuild = _sh(f"source <({venv}/facelift stack env) && {venv}/facelift rebuild --count 8 --wait "
                      "--timeout 400", env, timeout=500)
        assert rebuild.returncode == 0, (rebuild.stdout + rebuild.stderr)[-3000:] + _log(stack_dir)
        assert "Completed" in rebuild.stdout
        # nothing the stack or its services (server, SeaweedFS, Ray, worker, flow runs) wrote is open to others:
        # no folder lets them in (so no file can be read), no file lets them write. (SeaweedFS writes its volume
        # info files 0644 whatever the umask; they sit in the 0700 data folder.)
        tree = [p for p in [stack_dir, *stack_dir.rglob("*")] if not p.is_symlink()]
        shared = [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in tree
                  if (p.is_dir() and p.lstat().st_mode & 0o077) or p.lstat().st_mode & 0o022]
        assert not shared, shared[:10]
        ray_home = Path((stack_dir / "ray-tmp").read_text().strip())  # Ray's session folder lives in here
        assert ray_home.parent == Path("/tmp") and stat.S_IMODE(ray_home.stat().st_mode) == 0o700
        assert ray_home.stat().st_uid == os.getuid() and any(ray_home.glob("ray/session_*"))

        again = _sh(f"make stack VENV={venv.parent}", env, timeout=600)  # idempotent: running services kept
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    finally:
        pids = _pids(stack_dir)
        down = _sh(f"make stack-down VENV={venv.parent}", env, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert set(pids) == {"prefect", "seaweed", "ray", "worker"}
    assert not [name for name, pid in pids.items() if _alive(pid)], down.stdout
    assert not list(stack_dir.glob("*.pid"))
    import shutil

    shutil.rmtree(stack_dir, ignore_errors=True)


def _anonymous(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _quote(code: str) -> str:
    import shlex

    return shlex.quote(code)


def _log(stack_dir: Path) -> str:
    path = stack_dir / "worker.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
