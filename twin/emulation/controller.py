"""Run the controller as its own process, and talk to its HTTP API.

:class:`ControllerProcess` writes the controller's config file, starts
``python -m controllers.run`` (argument list, no shell), waits until ``/health``
answers, and on exit stops exactly that PID (SIGTERM, then SIGKILL).
:class:`ControllerClient` is a small synchronous client used by the CLI, the
daemon (in a thread) and the tests. The API is documented in docs/controller-api.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from threading import Thread

from twin.errors import TwinError
from twin.timeouts import scaled

LOG = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


class ControllerError(TwinError):
    """The controller could not be started, or its API answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ControllerClient:
    """Synchronous JSON client of the controller API (one keep-alive connection, not thread-safe)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8181, *, timeout: float | None = None):
        self.host, self.port = host, port
        self.timeout = scaled(30.0) if timeout is None else timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: object = None) -> object:
        """Send one request; returns the decoded JSON (None for 204).

        Raises:
            ControllerError: connection failure, or an error status (message and status from the API).
        """
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):  # one retry: a kept-alive connection may have been closed by the server
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
                break
            except (OSError, http.client.HTTPException) as err:
                self.close()
                if attempt == 2 or method not in ("GET", "PUT", "DELETE"):
                    raise ControllerError(f"controller API {method} {path} at {self.host}:{self.port}: {err}") \
                        from None
        decoded = json.loads(payload) if payload else None
        if response.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else payload.decode(errors="replace")
            raise ControllerError(f"controller API {method} {path}: {response.status} {message}", response.status)
        return decoded

    # -- the API ----------------------------------------------------------------------------
    def health(self) -> dict:
        return self.request("GET", "/health")  # type: ignore[return-value]

    def topology(self) -> dict:
        return self.request("GET", "/topology")  # type: ignore[return-value]

    def lightpaths(self) -> list[dict]:
        return self.request("GET", "/lightpaths")  # type: ignore[return-value]

    def create_lightpath(self, src: str, dst: str, *, route: list[str] | None = None,
                         wavelength: int | None = None, lightpath_id: str | None = None) -> dict:
        body: dict[str, object] = {"src": src, "dst": dst}
        if route is not None:
            body["route"] = route
        if wavelength is not None:
            body["wavelength"] = wavelength
        if lightpath_id is not None:
            body["id"] = lightpath_id
        return self.request("POST", "/lightpaths", body)  # type: ignore[return-value]

    def delete_lightpath(self, lightpath_id: str) -> None:
        self.request("DELETE", f"/lightpaths/{lightpath_id}")

    def occupancy(self) -> dict:
        return self.request("GET", "/occupancy")  # type: ignore[return-value]

    def services(self) -> dict:
        return self.request("GET", "/services")  # type: ignore[return-value]

    def set_service_site(self, vip: str, site: str, *, force: bool = False) -> dict:
        """Send NEW connections to ``site``; open ones stay where they are (the old site drains).

        Call :meth:`service_drained` once the old site has no connections left.
        """
        body: dict[str, object] = {"site": site}
        if force:
            body["force"] = True
        return self.request("PUT", f"/services/{vip}", body)  # type: ignore[return-value]

    def service_drained(self, vip: str, site: str) -> dict:
        """The draining ``site`` has finished: remove its rules for the VIP."""
        return self.request("POST", f"/services/{vip}/drained", {"site": site})  # type: ignore[return-value]

    def cut_span(self, a: str, b: str) -> dict:
        """Tell the controller span a-b is cut; returns per lightpath ``restored_ms`` or ``blocked``."""
        return self.request("POST", f"/spans/{a}/{b}/cut", {})  # type: ignore[return-value]

    def repair_span(self, a: str, b: str) -> dict:
        return self.request("POST", f"/spans/{a}/{b}/repair", {})  # type: ignore[return-value]

    def wait_switches(self, count: int, timeout: float | None = None) -> dict:
        """Poll /health until ``count`` switches are connected.

        Raises:
            ControllerError: not reached within ``timeout`` seconds (says which are missing).
        """
        timeout = scaled(30.0) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        health: dict = {}
        while True:
            try:
                health = self.health()
                if health["switches_connected"] >= count:
                    return health
            except ControllerError:
                pass
            if time.monotonic() > deadline:
                missing = ", ".join(health.get("missing", [])) or "unknown"
                raise ControllerError(f"only {health.get('switches_connected', 0)} of {count} switches connected "
                                      f"after {timeout:g} s (missing: {missing}); are the bridges pointed at the "
                                      "controller's OpenFlow port?")
            time.sleep(0.05)


class ControllerProcess:
    """The controller as a child process; a context manager that always stops it.

    >>> with ControllerProcess("topologies/triangle.yaml") as ctl:   # doctest: +SKIP
    ...     ctl.client.wait_switches(3)
    """

    def __init__(self, topology_path: str | Path, *, portmap_path: str | Path | None = None,
                 ofp_port: int | None = None, api_host: str = "127.0.0.1", api_port: int | None = None,
                 workdir: str | Path | None = None, python: str = sys.executable,
                 start_timeout: float | None = None, stop_timeout: float = 5.0, log_level: str = "INFO",
                 purge_datapath_flows: bool = False):
        self.topology_path = str(Path(topology_path).resolve())
        self.portmap_path = str(Path(portmap_path).resolve()) if portmap_path else None
        self.ofp_port = ofp_port or free_port()
        self.api_host = api_host
        self.api_port = api_port or free_port(api_host)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="twin-controller-"))
        self.python = python
        self.start_timeout = scaled(20.0) if start_timeout is None else start_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.purge_datapath_flows = purge_datapath_flows  # see controllers.apn_controller.ControllerConfig
        self.process: subprocess.Popen | None = None
        self.client = ControllerClient(api_host, self.api_port)
        self._stderr: deque[str] = deque(maxlen=40)
        self._reader: Thread | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "controller.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "controller.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> "ControllerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process and wait until its API answers.

        Raises:
            ControllerError: it exited or did not answer in time (with the tail of its stderr).
        """
        config = {"topology_path": self.topology_path, "portmap_path": self.portmap_path,
                  "api_host": self.api_host, "api_port": self.api_port,
                  "purge_datapath_flows": self.purge_datapath_flows}
        self.config_path.write_text(json.dumps(config, indent=1))
        argv = [self.python, "-m", "controllers.run", "--config", str(self.config_path),
                "--ofp-port", str(self.ofp_port), "--log-level", self.log_level]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        self._stderr.clear()
        self.process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = Thread(target=self._read_stderr, args=(self.process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                self._reader.join(1)
                code = self.process.returncode
                self.process = None
                raise ControllerError(f"controller exited with status {code} during start:\n{self.stderr_tail()}")
            try:
                self.client.health()
                LOG.info("controller pid %d up: OpenFlow 127.0.0.1:%d, API %s:%d", self.pid, self.ofp_port,
                         self.api_host, self.api_port)
                return
            except ControllerError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ControllerError(f"controller API did not answer within {self.start_timeout:g} s:\n"
                                      f"{self.stderr_tail()}")
            time.sleep(0.05)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        # Drained continuously so the child never blocks on a full pipe; also kept in a log file.
        with open(self.log_path, "a") as log:
            for line in process.stderr:  # type: ignore[union-attr]
                self._stderr.append(line.rstrip("\n"))
                log.write(line)
                log.flush()

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:]) or "(no output)"

    def kill(self) -> None:
        """SIGKILL the process (tests of crash recovery); :meth:`start` may be called again."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None
        self.client.close()

    def stop(self) -> None:
        """SIGTERM our PID, wait, SIGKILL after ``stop_timeout``; idempotent."""
        self.client.close()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("controller pid %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(2)
            self._reader = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
