"""A Spark standalone cluster on this machine, for tests: a master and workers as separate
processes, from the pyspark package's own jars (bin/spark-class). Each worker has its own work,
local and temp folders; none of them is the driver's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipeline.local.ports import free_port, wait_for_port


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


class StandaloneCluster:
    def __init__(self, workers: int = 2, cores: int = 1, memory: str = "1g"):
        self.workers, self.cores, self.memory = workers, cores, memory
        self.root = Path(tempfile.mkdtemp(prefix="spark-standalone-"))
        self.processes: list[subprocess.Popen] = []
        self.port = free_port(7077)
        self.ui_port = free_port(8980)
        self.url = f"spark://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str]) -> None:
        folder = self.root / name
        (folder / "tmp").mkdir(parents=True)
        env = {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(folder / "local"),
            "SPARK_WORKER_DIR": str(folder / "work"),
            "SPARK_LOG_DIR": str(folder / "logs"),
            "PYSPARK_PYTHON": sys.executable,
            "TMPDIR": str(folder / "tmp"),
        }
        log = open(folder / "process.log", "wb")  # noqa: SIM115 - the child owns it
        self.processes.append(
            subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def alive_workers(self) -> int:
        """Workers the master has registered, read from the master's own log: its web UI can sit on
        another port than the one asked for (Spark moves on when a port is taken) and answers HTML
        while it starts."""
        log = (self.root / "master" / "process.log").read_text(errors="replace")
        registered = len(set(re.findall(r"Registering worker (\S+)", log)))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
                state = json.load(response)
        except (OSError, ValueError):
            return registered
        if not isinstance(state, dict) or "workers" not in state:
            return registered
        return max(registered, sum(1 for w in state["workers"] if w.get("state") == "ALIVE"))

    def __enter__(self) -> StandaloneCluster:
        master = "org.apache.spark.deploy.master.Master"
        self._spawn(
            "master", [master, "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)]
        )
        if not wait_for_port(self.port, timeout=60):
            raise RuntimeError(f"the Spark master did not start: {(self.root / 'master' / 'process.log').read_text()}")
        for n in range(self.workers):
            folder = self.root / f"worker-{n}"
            self._spawn(
                f"worker-{n}",
                [
                    "org.apache.spark.deploy.worker.Worker",
                    "--host", "127.0.0.1",
                    "--cores", str(self.cores),
                    "--memory", self.memory,
                    "--work-dir", str(folder / "work"),
                    "--webui-port", str(free_port(8990 + n)),
                    self.url,
                ],
            )  # fmt: skip
        deadline = time.monotonic() + 90
        while self.alive_workers() < self.workers:
            if time.monotonic() > deadline:
                log = (self.root / "master" / "process.log").read_text(errors="replace")[-4000:]
                raise RuntimeError(
                    f"{self.alive_workers()} of {self.workers} Spark workers registered in 90 s; master log:\n{log}"
                )
            time.sleep(1)
        return self

    def executor_logs(self) -> str:
        """What the executors wrote (their stderr), from every worker's own work folder."""
        return "".join(p.read_text(errors="replace") for p in self.root.glob("worker-*/work/*/*/stderr"))

    def __exit__(self, *exc) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.root, ignore_errors=True)
